"""``multilabel``: several yes/no labels per image (the paper's Table 4, CelebA's 40 attributes).

* **Output.** One logit per label; a label is predicted present when its logit is above 0
  (probability above 0.5).
* **Loss.** Binary cross-entropy with logits, averaged over labels and images. Label smoothing
  is classification's and does not apply.
* **Metric.** Mean per-label accuracy: the accuracy of each label over the images, averaged
  over the labels (the paper's CelebA number); the exact-match ratio (every label right) is
  reported beside it.
* **Distillation.** Per label: T² × the KL divergence between the teacher's and the student's
  softened Bernoulli distributions (sigmoid of logit / T), averaged over labels and images.
* **Data.** :mod:`.multilabel_data`: the digit-attributes demo, a ``labels.csv`` per split
  folder, or CelebA's files. Augmentation is classification's (the labels are per image).

Example:
    >>> from cafeslim.tasks import get_task
    >>> t = get_task("multilabel")
    >>> m = t.meter(); m.update(torch.tensor([[3., -3.], [3., 3.]]), torch.tensor([[1., 0.], [1., 0.]]))
    >>> m.compute()
    {'label_acc': 0.75, 'exact_match': 0.5}
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataSource, LossFn, Meter, Task, register_task
from .multilabel_data import DEMO_LABELS, LAYOUT, Relabel, demo_label_table, scan_multilabel, scan_workers


def bernoulli_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(Bern(σ(t/T)) || Bern(σ(s/T)))``, averaged over labels and images.

    Example:
        >>> float(bernoulli_kd(torch.zeros(2, 3), torch.zeros(2, 3), 2.0))
        0.0
    """
    t = float(temperature)
    s, q = student.float() / t, teacher.float() / t
    log_p, log_1p = F.logsigmoid(s), F.logsigmoid(-s)
    log_q, log_1q = F.logsigmoid(q), F.logsigmoid(-q)
    kl = log_q.exp() * (log_q - log_p) + log_1q.exp() * (log_1q - log_1p)
    return kl.mean() * (t * t)


class LabelAccuracyMeter(Meter):
    """Mean per-label accuracy and exact-match ratio over batches (logit > 0 is "present").

    Example:
        >>> m = LabelAccuracyMeter(lambda o: o)
        >>> m.update(torch.tensor([[1., 1., -1.]]), torch.tensor([[1, 0, 0]])); m.compute()
        {'label_acc': 0.6666666666666666, 'exact_match': 0.0}
    """

    def __init__(self, select: Any):
        super().__init__(select)
        self.right: Optional[torch.Tensor] = None
        self.exact = 0

    def update(self, output: Any, target: torch.Tensor) -> None:
        logits = self.select(output)
        hit = (logits > 0) == (target.to(logits.device) > 0.5)
        per_label = hit.sum(0).cpu().long()
        self.right = per_label if self.right is None else self.right + per_label
        self.exact += int(hit.all(dim=1).sum())
        self.count += int(target.shape[0])

    def compute(self) -> Dict[str, float]:
        if self.right is None or not self.count:
            return {"label_acc": float("nan"), "exact_match": float("nan")}
        return {"label_acc": float((self.right.double() / self.count).mean()),
                "exact_match": self.exact / self.count}


class _BCE:
    """Binary cross-entropy with logits on the selected output (``loss_fn`` form)."""

    def __init__(self, task: Task):
        self.task = task

    def __call__(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.task.select(output).float(), target.float())


@register_task
class MultilabelTask(Task):
    """Several binary labels per image (CelebA attributes)."""

    name = "multilabel"
    metric = "label_acc"
    metrics = ("label_acc", "exact_match")
    labels = {"label_acc": "mean label accuracy", "exact_match": "exact match"}
    layout = LAYOUT

    def loss_fn(self, label_smoothing: float = 0.0) -> LossFn:
        return _BCE(self)

    def distill(self, student: Any, teacher: Any, temperature: float) -> torch.Tensor:
        return bernoulli_kd(self.select(student), self.select(teacher), temperature)

    def meter(self) -> Meter:
        return LabelAccuracyMeter(self.select)

    def classes(self, data: str) -> Tuple[str, ...]:
        if data in self.builtin:
            return DEMO_LABELS
        return scan_multilabel(os.path.abspath(data))[0].names

    def source(self, data: str, info: Any, cfg: Any, bad: Any) -> DataSource:
        from ..config import aug_of
        from ..data.demo import DigitsDataset, demo_splits, load_digit_images
        from ..data.folders import ImageFolder, Subset
        from ..data.loaders import _augmented
        from ..data.transforms import build_transforms, data_config

        dcfg, augc = data_config(info, cfg.img_size), aug_of(cfg)
        if data in self.builtin:
            images, labels = load_digit_images()
            splits = demo_splits(labels.numpy())
            full = Relabel(DigitsDataset(images, labels, dcfg["input_size"], dcfg["mean"], dcfg["std"]),
                           demo_label_table())
            train_ds = eval_ds = full
            pool, test = splits.train, Subset(full, splits.test)
            workers, names, source = 0, DEMO_LABELS, data
        else:
            table, test_table = scan_multilabel(os.path.abspath(data))
            train_tf, eval_tf = build_transforms(info, cfg.img_size, augc)
            train_ds = ImageFolder(table.samples(), train_tf, bad)
            eval_ds = ImageFolder(table.samples(), eval_tf, bad)
            pool = np.arange(len(table.paths))
            test = ImageFolder(test_table.samples(), eval_tf, bad) if test_table else None
            workers, names, source = scan_workers(cfg.workers), table.names, str(data)
        train_ds = _augmented(train_ds, eval_ds, augc, source, info, dcfg, cfg.img_size)
        return DataSource(train_ds, eval_ds, np.asarray(pool), test, tuple(names), workers, source)


__all__ = ["LabelAccuracyMeter", "MultilabelTask", "bernoulli_kd"]
