"""Knowledge distillation (Hinton et al. 2015): the student learns the teacher's soft targets.

The paper distils MobileNetV2 (section 4.1); ModelOpt, MMRazor and NNI recover the accuracy of
pruned networks the same way. The loss is ``(1 - α)·CE(student, labels) + α·T²·KL(teacher_T ||
student_T)`` with both softmaxes at temperature T; the T² keeps the gradient scale of the soft
term independent of T.

Example:
    >>> s = torch.zeros(2, 3); t = torch.zeros(2, 3)
    >>> float(kd_loss(s, t, temperature=2.0))
    0.0
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch.

    Example:
        >>> float(kd_loss(torch.tensor([[0., 9.]]), torch.tensor([[9., 0.]]), 1.0)) > 8
        True
    """
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=-1)
    log_q = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


class Distiller:
    """Holds a frozen teacher in eval mode and mixes its soft targets into the loss.

    Args:
        teacher: any module whose logits have the student's number of classes.
        alpha: weight of the distillation term.
        temperature: T of both softmaxes.

    Example:
        >>> d = Distiller(nn.Linear(4, 3), alpha=0.5, temperature=4.0)
        >>> x = torch.zeros(2, 4); d.loss(torch.zeros(2, 3), x, torch.tensor(1.0)).shape
        torch.Size([])
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def to(self, device: torch.device) -> "Distiller":
        self.teacher.to(device)
        return self

    def loss(self, student_logits: torch.Tensor, images: torch.Tensor,
             hard_loss: torch.Tensor) -> torch.Tensor:
        """The combined loss for one batch (the teacher runs without gradients)."""
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        if teacher_logits.shape != student_logits.shape:
            raise ConfigError(f"the teacher gives logits of shape {tuple(teacher_logits.shape)}, "
                              f"the student {tuple(student_logits.shape)}; a teacher must have "
                              "the student's number of classes")
        soft = kd_loss(student_logits, teacher_logits, self.temperature)
        return (1.0 - self.alpha) * hard_loss + self.alpha * soft


def make_distiller(teacher: Optional[nn.Module], alpha: float,
                   temperature: float) -> Optional[Distiller]:
    """A :class:`Distiller`, or None without a teacher or with ``alpha == 0``.

    Example:
        >>> make_distiller(None, 0.5, 4.0) is None
        True
    """
    if teacher is None or alpha <= 0:
        return None
    return Distiller(teacher, alpha, temperature)


__all__ = ["Distiller", "kd_loss", "make_distiller"]
