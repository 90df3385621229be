"""``classification``: one class per image — cross-entropy, top-1/top-5, image folders.

This is what cafeslim did before it knew other tasks, unchanged: the supernet trains on
label-smoothed cross-entropy, the search scores widths by D_val top-1, ``train`` and ``eval``
report top-1 and top-5, and the data are the digits demo, ``demo-hard`` or an ImageNet-layout
folder (:func:`cafeslim.data.loaders.classification_source`). Mixup, CutMix and knowledge
distillation (Hinton et al. 2015) apply.

Example:
    >>> from cafeslim.tasks import get_task
    >>> t = get_task("classification")
    >>> float(t.loss(torch.zeros(2, 2), torch.tensor([0, 1])))
    0.6931471824645996
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .base import DataSource, LossFn, Meter, Task, register_task


def classification_loss(logits: torch.Tensor, targets: torch.Tensor,
                        soft: Optional[torch.Tensor], smoothing: float) -> torch.Tensor:
    """Cross-entropy on hard targets (label-smoothed) or on mixed soft targets.

    Example:
        >>> float(classification_loss(torch.zeros(2, 2), torch.tensor([0, 1]), None, 0.0))
        0.6931471824645996
    """
    if soft is not None:
        return torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch.

    The T² keeps the gradient scale of the soft term independent of T.

    Example:
        >>> float(kd_loss(torch.tensor([[0., 9.]]), torch.tensor([[9., 0.]]), 1.0)) > 8
        True
    """
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=-1)
    log_q = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


class _CrossEntropy:
    """The supernet's loss: ``nn.CrossEntropyLoss(label_smoothing)`` on the selected logits."""

    def __init__(self, task: Task, label_smoothing: float):
        self.task, self.label_smoothing = task, float(label_smoothing)

    def __call__(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.task.select(output), targets,
                               label_smoothing=self.label_smoothing)


class TopKMeter(Meter):
    """Top-1 and top-5 over batches (the count ``train``, ``eval`` and the search share).

    A sample is a top-k hit when its label is among the k largest logits (``topk``; with
    fewer than 5 classes, top-5 counts all of them).

    Example:
        >>> m = TopKMeter(lambda o: o); m.update(torch.eye(3), torch.tensor([0, 2, 2]))
        >>> m.compute(), m.count
        ({'top1': 0.6666666666666666, 'top5': 1.0}, 3)
    """

    def __init__(self, select: Any):
        super().__init__(select)
        self.top1 = self.top5 = 0

    def update(self, output: Any, target: torch.Tensor) -> None:
        out = self.select(output)
        best = out.topk(min(5, out.shape[1]), dim=1).indices
        hits = best == target.to(best.device).view(-1, 1)
        self.top1 += int(hits[:, 0].sum())
        self.top5 += int(hits.any(dim=1).sum())
        self.count += int(target.numel())

    def compute(self) -> Dict[str, float]:
        if not self.count:
            return {"top1": float("nan"), "top5": float("nan")}
        return {"top1": self.top1 / self.count, "top5": self.top5 / self.count}


@register_task
class ClassificationTask(Task):
    """One class per image (the default task)."""

    name = "classification"
    metric = "top1"
    metrics = ("top1", "top5")
    labels = {"top1": "top-1", "top5": "top-5"}
    builtin = ("demo", "demo-hard")
    layout = "DIR/train/<class>/*.jpg, optional DIR/val/<class>/*"

    def loss_fn(self, label_smoothing: float = 0.0) -> LossFn:
        return _CrossEntropy(self, label_smoothing)

    def retrain_loss(self, output: Any, targets: torch.Tensor, soft: Optional[torch.Tensor],
                     label_smoothing: float) -> torch.Tensor:
        return classification_loss(self.select(output), targets, soft, label_smoothing)

    def distill(self, student: Any, teacher: Any, temperature: float) -> torch.Tensor:
        return kd_loss(self.select(student), self.select(teacher), temperature)

    def check_recipe(self, cfg: Any) -> None:
        return None  # every setting of the recipe applies

    def meter(self) -> Meter:
        return TopKMeter(self.select)

    def classes(self, data: str) -> Tuple[str, ...]:
        from ..data.loaders import folder_classes

        return folder_classes(data)

    def source(self, data: str, info: Any, cfg: Any, bad: Any) -> DataSource:
        from ..data.loaders import classification_source

        return classification_source(data, info, cfg, bad)


__all__ = ["ClassificationTask", "TopKMeter", "classification_loss", "kd_loss"]
