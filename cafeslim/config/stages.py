"""The frozen settings of every stage: min-min training, the search, the bins.

Each stage's settings are one frozen dataclass with defaults; the allowed values of a choice
are the field's ``Literal`` type, which the command line turns into its choices
(:func:`choices`), so a value is listed once. :class:`TrainConfig` *is a*
:class:`MinMinConfig` (it inherits the step's fields), so the settings of one min-min step are
never copied field by field.

Example:
    >>> TrainConfig(offset=0).minmin()
    MinMinConfig(offset=0, candidates=0, select_batch=0.5, minmin_start=0.0, sandwich=False, select_dtype=None, sampling='uniform', sampling_mix=0.5)
    >>> choices(SearchConfig, "method")
    ('cafenet', 'fixed', 'uniform', 'random')
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Iterable, List, Literal, Optional, Tuple

from ..errors import ConfigError
from .aug import AugConfig

DEFAULT_EPOCHS = 10
MIN_STEPS = 2000
"""Supernet steps a default-length training has at least (:meth:`TrainConfig.epochs_for`): on
``demo-hard`` as a folder at the default lr, 2,000 steps took the loss from 2.30 to 1.10
(D_val score 77%) where 10 epochs (400 steps) left it near chance."""
SelectDtype = Literal["bfloat16", "bf16", "float16", "fp16"]


def _check(checks: Iterable[Tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def choices(cls: type, name: str) -> Tuple[str, ...]:
    """The allowed values of a ``Literal`` (or ``Optional[Literal]``) settings field.

    Raises:
        ConfigError: the field is not a choice (a programming error surfaced early).

    Example:
        >>> choices(TrainConfig, "amp")
        ('off', 'bf16', 'fp16')
    """
    hint = typing.get_type_hints(cls)[name]  # each base in its own module's namespace
    for arg in (hint, *typing.get_args(hint)):
        if typing.get_origin(arg) is Literal:
            return tuple(str(a) for a in typing.get_args(arg))
    raise ConfigError(f"{cls.__name__}.{name} is not a choice")


@dataclass(frozen=True)
class MinMinConfig:
    """Settings of one min-min step (Eq. 11-12).

    Attributes:
        offset: r of Eq. 5 (0 = fixed pattern: one candidate, one forward and backward).
        candidates: extra candidates per step, mixing free choices per group at random.
        select_batch: fraction of the batch on which the candidates are compared (1.0 is the
            paper's full batch). At 0.5 the argmin was the full batch's in 83 % of the steps
            (``benchmarks/cheap_selection.py``), the step costs 1.54× a random one instead of
            1.96×, and the supernet ranked widths no worse: Kendall τ against stand-alone
            accuracy +0.65 against +0.57 at 1.0 (20 vectors, ``docs/search_quality.md``).
        minmin_start: λ: a random candidate instead of the min-loss one for the first λ of
            the steps (the paper's ablation).
        sandwich: also train the largest and the smallest width every step (AutoSlim).
        select_dtype: run the selection forwards under autocast in this dtype even when
            training is fp32 (near-ties may then rank differently); None: the training's.
        sampling: where the step's width comes from (:mod:`cafeslim.bins.sampling`):
            ``uniform`` over each group's bins (Eq. 1), ``budget`` (inside the FLOPs windows of
            the requested budgets and stages) or ``mixed``.
        sampling_mix: the budget fraction of ``mixed``.

    Example:
        >>> MinMinConfig(offset=1, select_batch=0.25).select_batch
        0.25
    """

    offset: int = 1
    candidates: int = 0
    select_batch: float = 0.5
    minmin_start: float = 0.0
    sandwich: bool = False
    select_dtype: Optional[SelectDtype] = None
    sampling: Literal["uniform", "budget", "mixed"] = "uniform"
    sampling_mix: float = 0.5

    def __post_init__(self) -> None:
        _check(((self.offset >= 0, "offset must be non-negative"),
                (0 <= self.sampling_mix <= 1, "sampling_mix must be in [0, 1]"),
                (self.candidates >= 0, "candidates must be non-negative"),
                (0 < self.select_batch <= 1, "select_batch must be in (0, 1]"),
                (0 <= self.minmin_start <= 1, "minmin_start must be in [0, 1]"),
                (self.select_dtype is None or self.select_dtype in typing.get_args(SelectDtype),
                 f"select_dtype must be one of {', '.join(typing.get_args(SelectDtype))}, "
                 f"not {self.select_dtype!r}")))


@dataclass(frozen=True)
class TrainConfig(AugConfig, MinMinConfig):
    """Settings of supernet (min-min) training; the step's own are :class:`MinMinConfig`'s.

    The augmentation fields (``aug``, ``shift``, ``scale``, ``ratio``, ``hflip``, ``aa``,
    ``reprob``) are :class:`~cafeslim.config.aug.AugConfig`'s, shared with ``cafeslim train``.

    Attributes:
        epochs: passes over D_tr (the training set minus D_val); None: 10, or more on small
            data so that the schedule has at least :data:`MIN_STEPS` steps
            (:meth:`epochs_for`; a run's ``config.yaml`` records the number used).
        batch_size: images per step and per process (the global batch is this × world size).
        lr: peak learning rate; ``None`` means ``0.1 × global batch / 256`` (the linear scaling
            rule of Goyal et al., with ResNet's 0.1 at batch 256).
        momentum: SGD momentum.
        weight_decay: L2 penalty on weights; norms and biases are never decayed.
        label_smoothing: of the cross-entropy loss.
        warmup_epochs: linear warmup length (may be fractional), then cosine decay to zero;
            both per step.
        amp: ``off``, ``bf16`` or ``fp16`` (autocast on CUDA; fp16 adds a GradScaler).
        channels_last: NHWC memory format for the model and the images.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        workers: data-loading processes (in-memory demo data always uses 0).
        seed: seeds weights, data order, augmentation, D_val split and width sampling.
        val_split: fraction of the training images held out as D_val for the search.
        img_size: square input size overriding the model's own (smaller is faster; FLOPs are
            then counted at this size too).
        log_every: steps between ``metrics.jsonl`` lines.
        ckpt_every: steps between checkpoints (0: at the end of every epoch only).
        max_steps: stop after this many steps in total (the schedule is compressed to fit);
            for tests and quick trials.
    """

    epochs: Optional[int] = None
    batch_size: int = 64
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 4
    seed: int = 0
    val_split: float = 0.1
    img_size: Optional[int] = None
    log_every: int = 20
    ckpt_every: int = 500
    max_steps: Optional[int] = None

    def __post_init__(self) -> None:
        _check(((self.epochs is None or self.epochs >= 1, "epochs must be at least 1"),
                (self.batch_size >= 1, "batch_size must be at least 1"),
                (self.lr is None or self.lr > 0, "lr must be positive"),
                (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
                (self.weight_decay >= 0, "weight_decay must be non-negative"),
                (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                (self.warmup_epochs >= 0, "warmup_epochs must be non-negative"),
                (self.workers >= 0, "workers must be non-negative"),
                (0 <= self.val_split < 1, "val_split must be in [0, 1)"),
                (self.img_size is None or self.img_size >= 8, "img_size must be at least 8"),
                (self.log_every >= 1, "log_every must be at least 1"),
                (self.ckpt_every >= 0, "ckpt_every must be non-negative"),
                (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1")))
        MinMinConfig.__post_init__(self)
        AugConfig.__post_init__(self)

    def epochs_for(self, steps_per_epoch: int) -> int:
        """The epochs to train on data of ``steps_per_epoch`` steps: ``epochs`` when given.

        Otherwise 10, raised to reach :data:`MIN_STEPS` steps: the paper's 10-epoch-style
        schedule is tens of thousands of steps on ImageNet but a few hundred on a folder of a
        few thousand images, too few for a supernet to learn (measured on ``demo-hard``).

        Example:
            >>> TrainConfig().epochs_for(20_000), TrainConfig().epochs_for(40), TrainConfig(epochs=3).epochs_for(40)
            (10, 50, 3)
        """
        if self.epochs is not None:
            return self.epochs
        return max(DEFAULT_EPOCHS, -(-MIN_STEPS // max(1, int(steps_per_epoch))))

    def peak_lr(self, world_size: int = 1) -> float:
        """The learning rate after warmup for a given number of processes.

        Example:
            >>> TrainConfig(batch_size=64).peak_lr(world_size=4)
            0.1
        """
        if self.lr is not None:
            return float(self.lr)
        return 0.1 * self.batch_size * world_size / 256

    def minmin(self) -> MinMinConfig:
        """Just the min-min step's settings (what a checkpoint-free caller needs).

        Example:
            >>> TrainConfig(offset=0).minmin().offset
            0
        """
        return MinMinConfig(**{f.name: getattr(self, f.name) for f in fields(MinMinConfig)})


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the width search (max-max, Eq. 13) and of the method.

    Attributes:
        flops: budget(s), comma-separated: ``2G``, ``300M``, ``50%``, ``0.5x``, ``1G,2G``.
        method: ``cafenet`` (locally free, r = offset), ``fixed`` (r = 0), ``uniform`` (no
            supernet training: one width multiplier for every layer, the paper's baseline) or
            ``random`` (the paper's Random baseline: ``random_n`` width vectors drawn
            uniformly in the budget window, each trained stand-alone for ``random_epochs``
            with the ``cafeslim train`` recipe, the best D_val score kept).
        searcher: a name of :data:`cafeslim.search.SEARCHERS`: ``evolution`` (CafeNet-E) or
            ``random`` (CafeNet-R).
        population, iterations, parents: evolutionary search; samples: random search.
        low: the window's lower end, a fraction of the budget.
        eval_batches: D_val batches per evaluation (None: all of D_val).
        recal_batches: training batches per BN recalibration (4: τ against stand-alone
            accuracy +0.62 at 1, 4 and 20 batches alike on ``demo-hard``; search widths/s
            3.8× the paper's 20 on ``test_resnet``, 2.6× on ResNet-50; docs/performance.md).
        stages, alpha: multi-stage search (Eq. 10): T stages, β divided by α each stage.
        random_n, random_epochs: ``--method random``: candidates per budget and the epochs
            each is trained.

    Example:
        >>> SearchConfig(flops="1G, 2G").budgets
        ['1G', '2G']
    """

    flops: Optional[str] = None
    method: Literal["cafenet", "fixed", "uniform", "random"] = "cafenet"
    searcher: Literal["evolution", "random"] = "evolution"
    population: int = 40
    iterations: int = 50
    parents: int = 10
    samples: int = 2000
    low: float = 0.97
    eval_batches: Optional[int] = None
    recal_batches: int = 4
    stages: int = 1
    alpha: float = 2.0
    random_n: int = 8
    random_epochs: int = 1

    def __post_init__(self) -> None:
        _check(((self.population >= 2, "population must be at least 2"),
                (self.iterations >= 1, "iterations must be at least 1"),
                (self.parents >= 1, "parents must be at least 1"),
                (self.samples >= 1, "samples must be at least 1"),
                (0 < self.low <= 1, "low must be in (0, 1]"),
                (self.recal_batches >= 1, "recal_batches must be at least 1"),
                (self.eval_batches is None or self.eval_batches >= 1,
                 "eval_batches must be at least 1"),
                (self.stages >= 1, "stages must be at least 1"),
                (self.alpha > 0, "alpha must be positive"),
                (self.random_n >= 1, "random_n must be at least 1"),
                (self.random_epochs >= 1, "random_epochs must be at least 1"),
                # Method rule: the baselines train no supernet, so they have no stages.
                (self.method not in ("uniform", "random") or self.stages == 1,
                 f"--method {self.method} trains no supernet: it takes no --stages")))

    @property
    def budgets(self) -> List[str]:
        """The budgets as written, e.g. ``["1G", "2G"]``."""
        return [b.strip() for b in (self.flops or "").split(",") if b.strip()]


@dataclass(frozen=True)
class BinsConfig:
    """FLOPs-sensitive bins (Eq. 9): β, the channel divisor, the smallest width, channel order."""

    beta: float = 1.0
    divisor: int = 1
    min_width: Optional[float] = None
    order: Literal["natural", "l1"] = "natural"

    def __post_init__(self) -> None:
        _check(((self.beta > 0 and self.divisor >= 1,
                 "beta must be positive and divisor at least 1"),))


@dataclass(frozen=True)
class ExportConfig:
    """The choices of an export: which weights and which channels a width keeps.

    Attributes:
        init: ``inherit`` (supernet weights, BN recalibrated) or ``scratch`` (fresh weights).
        order: ``natural`` (the first channels) or ``l1`` (largest L1 norm first).
    """

    init: Literal["inherit", "scratch"] = "inherit"
    order: Literal["natural", "l1"] = "natural"


__all__ = ["DEFAULT_EPOCHS", "MIN_STEPS", "AugConfig", "BinsConfig", "ExportConfig", "MinMinConfig", "SearchConfig", "TrainConfig", "choices"]
