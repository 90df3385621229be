"""``segmentation``: a class per pixel — per-pixel cross-entropy, mean IoU, image + mask folders.

* **Output.** torchvision's segmentation models return ``{"out": logits, "aux": logits}``
  (``aux`` only when built with ``aux_loss=True``: FCN and DeepLabV3 with pretrained weights);
  ``out`` is scored. Logits of another spatial size than the mask are resized to it
  (bilinear), so a model that predicts at a lower resolution is trained and scored at the
  mask's.
* **Loss.** Cross-entropy per pixel, pixels labelled :data:`IGNORE_INDEX` (255) left out.
  When the model has an ``aux`` head it is trained too, with torchvision's reference weight
  0.5: the head is part of the model (its FLOPs count in the budget and it is exported), so
  leaving it untrained would ship a head of random weights; cafeslim does not add one (models
  are built without ``aux_loss``). Label smoothing is classification's and does not apply.
* **Metric.** Mean IoU over the classes present in the target or the prediction of the
  evaluated images (a class absent from both has no IoU and is not averaged), from one
  confusion matrix accumulated over all batches; pixel accuracy is reported beside it.
* **Distillation.** Per pixel: the classification term (T²·KL of the softened class
  distributions) averaged over every pixel — a segmentation network is a classifier per
  pixel, and a teacher's soft class scores carry the same information there.
* **Augmentation.** A padded random crop (and ``--hflip``) moved alike on image and mask
  (:class:`~.segmentation_data.JointShift`); timm's recipe cannot move masks and is refused.

Example:
    >>> from cafeslim.tasks import get_task
    >>> t = get_task("segmentation")
    >>> m = t.meter(); m.update(torch.tensor([[[[9.]], [[0.]]]]), torch.tensor([[[0]]]))
    >>> m.compute()
    {'miou': 1.0, 'pixel_acc': 1.0}
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .base import DataSource, LossFn, Meter, Task, first_tensor, register_task
from .classification import kd_loss
from .segmentation_data import (DEMO_SEG_CLASSES, IGNORE_INDEX, LAYOUT, JointShift, MaskedTensors,
                                MaskFolder, demo_canvases, scan_segmentation)

AUX_WEIGHT = 0.5  # torchvision's references/segmentation recipe


def resized(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits`` ``[N, C, h, w]`` at the target's ``[N, H, W]`` size (bilinear when it differs).

    Example:
        >>> resized(torch.zeros(1, 2, 4, 4), torch.zeros(1, 8, 8)).shape
        torch.Size([1, 2, 8, 8])
    """
    if tuple(logits.shape[-2:]) == tuple(target.shape[-2:]):
        return logits
    return F.interpolate(logits, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)


def pixel_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of ``out`` (+ 0.5 × that of ``aux`` when present), 255 ignored.

    Example:
        >>> y = torch.tensor([[[0, 255]]])
        >>> float(pixel_loss({"out": torch.zeros(1, 3, 1, 2)}, y))     # log 3, one pixel counted
        1.0986123085021973
    """
    target = target.long()
    loss = F.cross_entropy(resized(first_tensor(output).float(), target), target,
                           ignore_index=IGNORE_INDEX)
    if isinstance(output, dict) and isinstance(output.get("aux"), torch.Tensor):
        loss = loss + AUX_WEIGHT * F.cross_entropy(resized(output["aux"].float(), target), target,
                                                   ignore_index=IGNORE_INDEX)
    return loss


class IoUMeter(Meter):
    """Mean IoU and pixel accuracy from a confusion matrix accumulated over batches.

    IoU of class c = TP / (TP + FP + FN) over all pixels seen; the mean is over the classes
    with a non-empty union (present in the target or the prediction). Pixels labelled 255 are
    left out of everything.

    Example:
        >>> m = IoUMeter(lambda o: o)
        >>> logits = torch.tensor([[[[1., 0.]], [[0., 1.]], [[0., 0.]]]])   # predicts 0, 1
        >>> m.update(logits, torch.tensor([[[0, 0]]])); m.compute()         # class 1: IoU 0
        {'miou': 0.25, 'pixel_acc': 0.5}
    """

    def __init__(self, select: Any):
        super().__init__(select)
        self.hist: Optional[torch.Tensor] = None

    def update(self, output: Any, target: torch.Tensor) -> None:
        logits = self.select(output)
        target = target.to(logits.device).long()
        pred = resized(logits, target).argmax(1)
        c = int(logits.shape[1])
        valid = target != IGNORE_INDEX
        t, p = target[valid], pred[valid]
        if t.numel() and int(t.max()) >= c:
            raise DataError(f"a mask holds class {int(t.max())}, the model predicts {c} classes")
        counts = torch.bincount(t * c + p, minlength=c * c).reshape(c, c).cpu()
        self.hist = counts if self.hist is None else self.hist + counts
        self.count += int(target.shape[0])

    def compute(self) -> Dict[str, float]:
        if self.hist is None or int(self.hist.sum()) == 0:
            return {"miou": float("nan"), "pixel_acc": float("nan")}
        h = self.hist.double()
        tp = h.diag()
        union = h.sum(0) + h.sum(1) - tp
        present = union > 0
        return {"miou": float((tp[present] / union[present]).mean()),
                "pixel_acc": float(tp.sum() / h.sum())}


class _PixelLoss:
    """:func:`pixel_loss` as a ``loss_fn`` (label smoothing does not apply)."""

    def __call__(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return pixel_loss(output, target)


@register_task
class SegmentationTask(Task):
    """A class per pixel (torchvision's ``tv:fcn_*``, ``tv:deeplabv3_*``, ``tv:lraspp_*``)."""

    name = "segmentation"
    metric = "miou"
    metrics = ("miou", "pixel_acc")
    labels = {"miou": "mIoU", "pixel_acc": "pixel accuracy"}
    layout = LAYOUT
    demo_preset = {
        # tv:lraspp_mobilenet_v3_large at 64 px (docs/tasks.md): 10 epochs at batch 32 are
        # 400 min-min steps, with the 8 x 4 search about 6-7 minutes on two cores at load 3
        # (12 epochs took 5.5-8.6 minutes). The supernet stays weak at this length (D_val
        # mIoU 11-16% whether 200 or 480 steps): more steps cost minutes and change little.
        "train": {"epochs": 10, "batch_size": 32, "lr": 0.1, "warmup_epochs": 0.5},
        "search": {"population": 8, "iterations": 4, "parents": 3, "samples": 32},
    }

    def loss_fn(self, label_smoothing: float = 0.0) -> LossFn:
        return _PixelLoss()

    def distill(self, student: Any, teacher: Any, temperature: float) -> torch.Tensor:
        s, t = self.select(student), self.select(teacher)
        t = resized(t, s[:, 0])
        flat = (lambda x: x.movedim(1, -1).reshape(-1, x.shape[1]))  # noqa: E731 - pixels as rows
        return kd_loss(flat(s), flat(t), temperature)

    def meter(self) -> Meter:
        return IoUMeter(self.select)

    def classes(self, data: str) -> Tuple[str, ...]:
        if data in self.builtin:
            return DEMO_SEG_CLASSES
        return scan_segmentation(_abs(data)).classes

    def source(self, data: str, info: Any, cfg: Any, bad: Any) -> DataSource:
        from ..data.transforms import data_config

        dcfg = data_config(info, cfg.img_size)
        size, mean, std = dcfg["input_size"], dcfg["mean"], dcfg["std"]
        if data in self.builtin:
            train_c, test_c = demo_canvases()
            full = MaskedTensors(train_c, size, mean, std)
            test = MaskedTensors(test_c, size, mean, std)
            workers, classes, name = 0, DEMO_SEG_CLASSES, data
        else:
            scanned = scan_segmentation(_abs(data))
            full = MaskFolder(scanned.train, size, mean, std, bad)
            test = MaskFolder(scanned.test, size, mean, std, bad) if scanned.test else None
            workers = min(int(cfg.workers), os.cpu_count() or 1)
            classes, name = scanned.classes, str(data)
        train = _augmented(full, cfg, int(size[-1]))
        return DataSource(train, full, np.arange(len(full)), test, tuple(classes), workers, name)


def _abs(data: str) -> str:
    return os.path.abspath(data)


def _augmented(dataset: Any, cfg: Any, size: int) -> Any:
    """D_tr's samples under the augmentation: ``auto``/``shift`` a joint shift, ``none`` none."""
    from ..config import aug_of
    from ..data.augment import default_shift

    augc = aug_of(cfg)
    aug = augc.aug if augc is not None else "none"
    if aug == "timm" or (aug == "auto" and augc is not None and augc.wants_timm):
        raise ConfigError("timm's augmentation moves the image but not its mask; segmentation "
                          "takes --aug auto, shift or none (and --shift, --hflip)")
    if aug == "none":
        return dataset
    shift = augc.shift if augc.shift is not None else default_shift(size)
    return JointShift(dataset, shift, hflip=augc.hflip or 0.0)


__all__ = ["AUX_WEIGHT", "IoUMeter", "SegmentationTask", "pixel_loss", "resized"]
