"""Knowledge distillation (Hinton et al. 2015): the student learns the teacher's soft targets.

The paper distils MobileNetV2 (section 4.1); ModelOpt, MMRazor and NNI recover the accuracy of
pruned networks the same way. The loss is ``(1 - α)·CE(student, labels) + α·T²·KL(teacher_T ||
student_T)`` with both softmaxes at temperature T; the T² keeps the gradient scale of the soft
term independent of T. The soft term is the task's (:meth:`cafeslim.tasks.Task.distill`: per
pixel for segmentation, per label for multi-label); :func:`kd_loss` is classification's.

Example:
    >>> s = torch.zeros(2, 3); t = torch.zeros(2, 3)
    >>> float(kd_loss(s, t, temperature=2.0))
    0.0
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..tasks.classification import kd_loss


class Distiller:
    """Holds a frozen teacher in eval mode and mixes its soft targets into the loss.

    Args:
        teacher: any module whose logits have the student's number of classes.
        alpha: weight of the distillation term.
        temperature: T of both softmaxes.
        task: the :mod:`cafeslim.tasks` task (or its name) whose distillation term is used
            and whose scored output is compared (None: classification).

    Example:
        >>> d = Distiller(nn.Linear(4, 3), alpha=0.5, temperature=4.0)
        >>> x = torch.zeros(2, 4); d.loss(torch.zeros(2, 3), x, torch.tensor(1.0)).shape
        torch.Size([])
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float, task: Any = None):
        from ..tasks import get_task

        self.task = get_task(task)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def to(self, device: torch.device) -> "Distiller":
        self.teacher.to(device)
        return self

    def loss(self, student_logits: Any, images: torch.Tensor,
             hard_loss: torch.Tensor) -> torch.Tensor:
        """The combined loss for one batch (the teacher runs without gradients)."""
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        t, s = self.task.select(teacher_logits), self.task.select(student_logits)
        if t.shape != s.shape:
            raise ConfigError(f"the teacher gives logits of shape {tuple(t.shape)}, "
                              f"the student {tuple(s.shape)}; a teacher must have "
                              "the student's number of classes")
        soft = self.task.distill(student_logits, teacher_logits, self.temperature)
        return (1.0 - self.alpha) * hard_loss + self.alpha * soft


def make_distiller(teacher: Optional[nn.Module], alpha: float,
                   temperature: float, task: Any = None) -> Optional[Distiller]:
    """A :class:`Distiller`, or None without a teacher or with ``alpha == 0``.

    Example:
        >>> make_distiller(None, 0.5, 4.0) is None
        True
    """
    if teacher is None or alpha <= 0:
        return None
    return Distiller(teacher, alpha, temperature, task)


__all__ = ["Distiller", "kd_loss", "make_distiller"]
