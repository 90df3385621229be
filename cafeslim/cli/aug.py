"""The augmentation flags, timm's names, shared by ``search`` and ``train``.

``--aug auto|timm|shift|none``, ``--no-aug`` (= ``--aug none``), ``--scale LO HI``,
``--ratio LO HI``, ``--hflip P``, ``--aa NAME``, ``--reprob P`` and ``--shift PX``: each is a
field of :class:`~cafeslim.config.AugConfig`; :func:`aug_flags` turns the parsed values into
the ``train`` section's flags (None: not given, so YAML and defaults apply).

Example:
    >>> aug_flags(None, True, None, None, None, None, None, None)["aug"]
    'none'
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, Optional, Tuple

import typer

from ..config import AugConfig
from ..errors import ConfigError
from .common import choice_enum

Aug = choice_enum(AugConfig, "aug")


def _o(*names: str, help: str, **kw: Any) -> Any:  # noqa: A002 - typer's keyword
    return typer.Option(*names, help=help, show_default=False, **kw)


AugOpt = Annotated[Optional[Aug], _o("--aug", case_sensitive=False, help=(
    "Training augmentation: auto (default: shift for the demo and images of at most 64 px, "
    "timm when --scale/--ratio/--aa/--reprob is given or for larger images), timm "
    "(RandomResizedCrop, flip, colour jitter), shift (padded random crop) or none."))]
NoAugOpt = Annotated[bool, typer.Option("--no-aug", help="No augmentation (= --aug none).")]
ScaleOpt = Annotated[Optional[Tuple[float, float]], _o("--scale", metavar="LO HI", help=(
    "RandomResizedCrop area range (timm's default 0.08 1)."))]
RatioOpt = Annotated[Optional[Tuple[float, float]], _o("--ratio", metavar="LO HI", help=(
    "RandomResizedCrop aspect range (timm's default 0.75 1.33)."))]
HflipOpt = Annotated[Optional[float], _o("--hflip", metavar="P", min=0.0, max=1.0, help=(
    "Horizontal flip probability (default 0.5 for timm, 0 for shift)."))]
AaOpt = Annotated[Optional[str], _o("--aa", metavar="NAME", help=(
    "timm's AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5 (default off)."))]
ReprobOpt = Annotated[Optional[float], _o("--reprob", metavar="P", min=0.0, max=1.0, help=(
    "RandomErasing probability (default 0)."))]
ShiftOpt = Annotated[Optional[int], _o("--shift", metavar="PX", min=0, help=(
    "Largest shift of the padded crop (default: input size / 32, at least 1)."))]


def aug_flags(aug: Any, no_aug: bool, scale: Optional[Tuple[float, float]],
              ratio: Optional[Tuple[float, float]], hflip: Optional[float], aa: Optional[str],
              reprob: Optional[float], shift: Optional[int]) -> Dict[str, Any]:
    """The parsed augmentation flags as ``train``-section flags (None: not given).

    Raises:
        ConfigError: ``--no-aug`` together with another ``--aug``.

    Example:
        >>> aug_flags(None, False, (0.5, 1.0), None, None, None, None, None)["scale"]
        (0.5, 1.0)
    """
    value = getattr(aug, "value", aug)
    if no_aug:
        if value not in (None, "none"):
            raise ConfigError(f"--no-aug contradicts --aug {value}")
        value = "none"
    # click gives an unset tuple option as an empty tuple or a tuple of Nones.
    pair = lambda v: tuple(v) if v and all(x is not None for x in v) else None  # noqa: E731
    return {"aug": value, "scale": pair(scale), "ratio": pair(ratio), "hflip": hflip, "aa": aa,
            "reprob": reprob, "shift": shift}


__all__ = ["AaOpt", "AugOpt", "HflipOpt", "NoAugOpt", "RatioOpt", "ReprobOpt", "ScaleOpt",
           "ShiftOpt", "aug_flags"]
