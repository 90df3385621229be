"""The frozen settings of ``cafeslim train``: training a searched (or any) network to the end.

:class:`RetrainConfig` is to ``train`` what :class:`~cafeslim.config.TrainConfig` is to the
supernet: one frozen dataclass, its ``Literal`` fields the command line's choices. Its flag
names follow timm's ``train.py`` (``--opt``, ``--sched``, ``--warmup-epochs``, ``--mixup``,
``--cutmix``, ``--model-ema``) so that a timm user finds them where they look.

Defaults are a small-data recipe that trains from scratch in a few epochs on a CPU (measured on
the demo digits and on 64 px folders): SGD with Nesterov momentum, a linear warmup and a cosine
(one-cycle like) decay per step, label smoothing 0.1 and, for images of at most 64 px, a padded
random crop instead of ImageNet's RandomResizedCrop (see :mod:`cafeslim.data.augment`).

Example:
    >>> RetrainConfig(opt="adamw").peak_lr()
    0.001
    >>> choices(RetrainConfig, "sched")
    ('cosine', 'step')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .aug import AugConfig
from .run import TaskName, task_name
from .stages import _check, choices  # noqa: F401 - choices: the doctest's and callers' helper

# Where a resumed training may differ from the first invocation: how, not what, it computes.
RETRAIN_RESUMABLE = ("workers", "device", "ckpt_every")


@dataclass(frozen=True)
class RetrainConfig(AugConfig):
    """Settings of ``cafeslim train`` / :func:`cafeslim.train`.

    The augmentation fields (``aug``, ``shift``, ``scale``, ``ratio``, ``hflip``, ``aa``,
    ``reprob``) are :class:`~cafeslim.config.aug.AugConfig`'s, shared with ``cafeslim search``.

    Attributes:
        epochs: passes over the training images (D_tr: the training set minus the holdout).
        batch_size: images per step and per process (under ``torchrun`` the global batch is
            ``batch_size × processes``).
        lr: peak learning rate; None: 0.1 × batch/64 for SGD, 1e-3 × batch/64 for AdamW.
        opt: ``sgd`` (Nesterov momentum) or ``adamw``.
        momentum: SGD momentum.
        weight_decay: on weights only (never norms and biases); None: 5e-5 for SGD, 0.05 for
            AdamW.
        sched: ``cosine`` (to zero at the end) or ``step`` (× ``decay_rate`` every
            ``decay_epochs``); both per step, after ``warmup_epochs`` of linear warmup.
        decay_epochs, decay_rate: the step schedule.
        warmup_epochs: linear warmup (may be fractional; at most a quarter of the steps).
        label_smoothing: of the cross-entropy (and of the mixed targets).
        mixup, cutmix: Beta(α, α) of mixup / CutMix; 0 is off (default). With both, each
            batch uses one of the two at random.
        model_ema: keep an exponential moving average of the weights; it is what is
            evaluated, kept and exported.
        model_ema_decay: its decay per step.
        amp: ``off``, ``bf16`` or ``fp16`` (fp16 on CUDA only).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        workers: data-loading processes (the in-memory demo always uses 0).
        seed: seeds the initial weights, the data order, the augmentation and the holdout.
        val_split: fraction of the training images held out; ``best.pt`` is selected on them
            (never on the test split).
        img_size: square input size (default: the run's or export's own, demo 64 px).
        init: ``scratch`` (the paper: the family's own initialisation at the new widths) or
            ``inherit`` (the supernet's or the export's weights: fine-tuning).
        teacher: ``original``, ``supernet``, ``none``, a model name or a model file; None:
            ``original`` when the original has weights, else ``none``.
        kd_alpha: weight of the distillation term (loss = (1-α)·CE + α·T²·KL).
        kd_temperature: T of the distillation softmax.
        ckpt_every: steps between ``last.pt`` checkpoints besides every epoch's end (0: off).
        bn_momentum: BatchNorm momentum for the training (timm's ``--bn-momentum``); None:
            the model's own, unless it is below 0.1 and the training shorter than 10/m steps,
            then 0.1 (torchvision's MobileNetV3 uses 0.01, whose running statistics still
            lag the weights after a few hundred steps; docs/tasks.md).
        num_classes: outputs of the classifier. A model TARGET is built with this many (None:
            the data's class count); a run or export keeps its head, and either way the data
            must have exactly this many classes (segmentation: classes with the background;
            multi-label: labels).
        task: ``classification``, ``segmentation`` or ``multilabel`` (:mod:`cafeslim.tasks`);
            None: the run's or export's own, ``classification`` for a model name. The
            training folder's ``config.yaml`` records the task used.

    Example:
        >>> RetrainConfig(batch_size=128).peak_lr()
        0.2
    """

    epochs: int = 15
    batch_size: int = 64
    lr: Optional[float] = None
    opt: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    sched: Literal["cosine", "step"] = "cosine"
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    model_ema: bool = False
    model_ema_decay: float = 0.998
    amp: Literal["off", "bf16", "fp16"] = "off"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 4
    seed: int = 0
    val_split: float = 0.1
    img_size: Optional[int] = None
    init: Literal["scratch", "inherit"] = "scratch"
    teacher: Optional[str] = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    ckpt_every: int = 0
    num_classes: Optional[int] = None
    task: Optional[TaskName] = None
    bn_momentum: Optional[float] = None

    def __post_init__(self) -> None:
        if self.task is not None:
            task_name(self.task)
        _check(((self.epochs >= 1, "epochs must be at least 1"),
                (self.batch_size >= 1, "batch_size must be at least 1"),
                (self.lr is None or self.lr > 0, "lr must be positive"),
                (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
                (self.weight_decay is None or self.weight_decay >= 0,
                 "weight_decay must be non-negative"),
                (self.decay_epochs > 0, "decay_epochs must be positive"),
                (0 < self.decay_rate <= 1, "decay_rate must be in (0, 1]"),
                (self.warmup_epochs >= 0, "warmup_epochs must be non-negative"),
                (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                (self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix must be non-negative"),
                (0 < self.model_ema_decay < 1, "model_ema_decay must be in (0, 1)"),
                (self.workers >= 0, "workers must be non-negative"),
                (0 <= self.val_split < 1, "val_split must be in [0, 1)"),
                (self.img_size is None or self.img_size >= 8, "img_size must be at least 8"),
                (0 <= self.kd_alpha <= 1, "kd_alpha must be in [0, 1]"),
                (self.kd_temperature > 0, "kd_temperature must be positive"),
                (self.ckpt_every >= 0, "ckpt_every must be non-negative"),
                (self.num_classes is None or self.num_classes >= 1,
                 "num_classes must be at least 1"),
                (self.bn_momentum is None or 0 < self.bn_momentum <= 1,
                 "bn_momentum must be in (0, 1]")))
        super().__post_init__()

    def peak_lr(self, world_size: int = 1) -> float:
        """The learning rate after warmup (linear in the global batch when not given).

        ``batch_size`` is per process, so under ``torchrun`` the global batch is
        ``batch_size × world_size``: two processes at ``-b 32`` get the rate of one at ``-b 64``.

        Example:
            >>> RetrainConfig(lr=0.05).peak_lr(), RetrainConfig(batch_size=32).peak_lr(world_size=2)
            (0.05, 0.1)
        """
        if self.lr is not None:
            return float(self.lr)
        base = 0.1 if self.opt == "sgd" else 1e-3
        return base * self.batch_size * int(world_size) / 64

    def decay(self) -> float:
        """The weight decay in use (the optimizer's default when not given).

        Example:
            >>> RetrainConfig(opt="adamw").decay()
            0.05
        """
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 5e-5 if self.opt == "sgd" else 0.05


__all__ = ["RETRAIN_RESUMABLE", "RetrainConfig"]
