"""The training augmentation: one set of settings shared by ``search`` and ``train``.

:class:`AugConfig` is the one home of the augmentation fields; the supernet's
:class:`~cafeslim.config.TrainConfig` and the retraining :class:`~cafeslim.config.RetrainConfig`
both *are* an :class:`AugConfig` (they inherit its fields), so ``config.yaml`` has the same
keys in its ``train:`` section for both commands and no field is written twice. The flag names
are timm's ``train.py``: ``--no-aug``, ``--scale``, ``--ratio``, ``--hflip``, ``--aa``,
``--reprob``, plus ``--aug auto|timm|shift|none``.

``auto`` picks what suits the images (:func:`cafeslim.data.augment.resolve_aug`): ImageNet's
RandomResizedCrop from 8 % of the area, flips and colour jitter destroy images of a few dozen
pixels, so the demo and images of at most 64 px get a padded random crop (``shift``), others
timm's recipe. Giving a timm-only setting (``scale``, ``ratio``, ``aa``, ``reprob``) with
``auto`` asks for timm's recipe; with ``shift`` or ``none`` it is a contradiction.

Example:
    >>> AugConfig(scale=[0.5, 1]).scale
    (0.5, 1.0)
    >>> AugConfig(aug="shift", aa="rand-m9-mstd0.5")
    Traceback (most recent call last):
    ...
    cafeslim.errors.ConfigError: --aa sets timm's augmentation; it does not apply to --aug shift (use --aug timm or auto)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, Optional, Tuple

from ..errors import ConfigError

TIMM_ONLY = ("scale", "ratio", "aa", "reprob")
"""Settings of timm's recipe alone (RandomResizedCrop, AutoAugment, RandomErasing)."""


def _pair(name: str, value: Any) -> Optional[Tuple[float, float]]:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} takes two numbers LO HI, not {value!r}") from None
    if not 0 < lo <= hi:
        raise ConfigError(f"{name} must be 0 < LO <= HI, not {lo:g} {hi:g}")
    return lo, hi


@dataclass(frozen=True)
class AugConfig:
    """Training augmentation of ``search`` (the supernet) and ``train``.

    Attributes:
        aug: ``auto`` (``shift`` for the demo and images of at most 64 px unless a timm-only
            setting is given, else ``timm``), ``timm`` (timm's training transform:
            RandomResizedCrop, flip, colour jitter, optional AutoAugment and RandomErasing),
            ``shift`` (padded random crop) or ``none`` (timm's ``--no-aug``).
        shift: the padded crop's largest shift in pixels (None: input size / 32, at least 1).
        scale: RandomResizedCrop's area range (None: timm's 0.08 1.0).
        ratio: RandomResizedCrop's aspect range (None: timm's 3/4 4/3).
        hflip: horizontal flip probability (None: 0.5 for ``timm``, 0 for ``shift``: digits
            and text must not be mirrored).
        aa: timm's AutoAugment / RandAugment policy, e.g. ``rand-m9-mstd0.5`` (None: off).
        reprob: RandomErasing probability (0: off).

    Example:
        >>> AugConfig(hflip=0.0).hflip
        0.0
    """

    aug: Literal["auto", "timm", "shift", "none"] = "auto"
    shift: Optional[int] = None
    scale: Optional[Tuple[float, float]] = None
    ratio: Optional[Tuple[float, float]] = None
    hflip: Optional[float] = None
    aa: Optional[str] = None
    reprob: float = 0.0

    def __post_init__(self) -> None:
        # YAML gives lists: store tuples so that equal settings compare equal.
        object.__setattr__(self, "scale", _pair("scale", self.scale))
        object.__setattr__(self, "ratio", _pair("ratio", self.ratio))
        if self.shift is not None and self.shift < 0:
            raise ConfigError("shift must be non-negative")
        if self.hflip is not None and not 0 <= self.hflip <= 1:
            raise ConfigError("hflip must be in [0, 1]")
        if not 0 <= self.reprob <= 1:
            raise ConfigError("reprob must be in [0, 1]")
        if self.aug in ("shift", "none"):
            given = [n for n in TIMM_ONLY if getattr(self, n) not in (None, 0.0)]
            if given:
                raise ConfigError(f"--{given[0]} sets timm's augmentation; it does not apply to "
                                  f"--aug {self.aug} (use --aug timm or auto)")

    @property
    def wants_timm(self) -> bool:
        """Whether a timm-only setting is given (``auto`` then means ``timm``)."""
        return any(getattr(self, n) not in (None, 0.0) for n in TIMM_ONLY)


def aug_of(cfg: Any) -> Optional[AugConfig]:
    """The :class:`AugConfig` part of a settings object (None when it has no ``aug`` field).

    Example:
        >>> aug_of(AugConfig(aug="shift")).aug
        'shift'
    """
    if cfg is None or getattr(cfg, "aug", None) is None:
        return None
    return AugConfig(**{f.name: getattr(cfg, f.name, f.default) for f in fields(AugConfig)})


__all__ = ["AugConfig", "TIMM_ONLY", "aug_of"]
