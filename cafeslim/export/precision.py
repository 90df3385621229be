"""How much float32 round-off a model amplifies, and a float64 copy to compare it in.

``check`` compares a slimmed model with its masked full-width reference at 1e-4 of the
output. The two compute the same function in another order (fewer terms in a sum, a norm's
statistics by another formula), so they differ by float32 round-off: about 1e-7 of the
output in most networks. Some re-drawn deep networks amplify it until it is all there is:
timm's ``halonet_h1`` (28 residual blocks of halo attention, every branch switched on by
:mod:`~cafeslim.export.sensitize`) turns a 1e-9 change of its input into a 1e-3 change of
its output even where every BatchNorm fits its input, so its float32 output differs from
its own float64 output by tens of percent, and a correct slimmed copy from its reference by
as much. :func:`float64_run` measures that amplification on the full model; where it
exceeds ``1 / ROUNDOFF_MARGIN`` of the tolerance (:func:`needs_float64`), ``check``
compares in float64, where the same amplification leaves about 1e-9. A file exported in
float32 cannot be checked there: see :func:`export_verdict`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .compare import rel_diff

ROUNDOFF_MARGIN = 10.0
"""Float32 comparisons at a tolerance are trusted while the model's own round-off is this
many times smaller than the tolerance."""


@dataclass
class Float64Run:
    """The full model in float64: the copy, its input and output, and the float32 error.

    Attributes:
        model: a float64 deep copy of the model (eval mode).
        x: the example input in float64.
        out: the copy's output on ``x``.
        roundoff: the float32 output's difference from ``out``, relative to its scale
            (:func:`~cafeslim.export.compare.rel_diff`).
    """

    model: nn.Module
    x: Any
    out: Any
    roundoff: float


def as_float64(value: Any) -> Any:
    """``value`` with every floating tensor (also inside lists, tuples and dicts) in float64.

    Example:
        >>> as_float64((torch.zeros(2), 3))[0].dtype
        torch.float64
    """
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        items = [as_float64(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: as_float64(v) for k, v in value.items()}
    return value


def float64_run(model: nn.Module, x: Any, out: Any) -> Optional[Float64Run]:
    """Run a float64 copy of ``model`` on ``x`` and measure how far ``out`` (float32) is off.

    Returns None when the model does not run in float64 (an op without a float64 kernel):
    then only float32 comparisons are possible.

    Example:
        >>> run = float64_run(model, x, model(x))
        >>> run.roundoff < 1e-5   # most networks
        True
    """
    try:
        model64 = copy.deepcopy(model).double().eval()
        x64 = as_float64(x)
        with torch.no_grad():
            out64 = model64(*x64) if isinstance(x64, tuple) else model64(x64)
        return Float64Run(model64, x64, out64, rel_diff(out64, out))
    except Exception:  # a kernel without float64 support: stay in float32
        return None


def needs_float64(roundoff: Optional[float], rtol: float) -> bool:
    """True when float32 round-off (``roundoff``, relative) is too close to ``rtol`` to trust.

    Example:
        >>> needs_float64(3e-8, 1e-4), needs_float64(0.3, 1e-4), needs_float64(None, 1e-4)
        (False, True, False)
    """
    return roundoff is not None and roundoff * ROUNDOFF_MARGIN > rtol


def export_verdict(diff: float, scale: float, roundoff: Optional[float], rtol: float) -> Optional[str]:
    """Why a float32 file's difference from eager PyTorch proves nothing, or None if it does.

    A file run by another runtime (onnxruntime) rounds in another order; a model whose own
    float32 round-off (``roundoff``, from :func:`float64_run`) reaches ``rtol / ROUNDOFF_MARGIN``
    can then differ by more than ``rtol`` although the file is right, and float32 is all the
    file has. Such a difference is *not verified*, not failed.

    Example:
        >>> export_verdict(0.5, 1.0, 0.3, 1e-4)[:19]
        'float32 round-off a'
    """
    if not needs_float64(roundoff, rtol) or diff <= rtol * scale:
        return None
    return (f"float32 round-off alone moves this model's output by {roundoff:.1e} of its scale "
            f"(float32 vs float64), so a file evaluated in another order cannot match to {rtol:.0e}; "
            f"it differs by {diff:.2e} (the example's output scale {scale:.2e})")


def export_rtol(roundoff: Optional[float], rtol: float) -> float:
    """The tolerance to run an export comparison at: ``rtol``, widened to the model's round-off.

    Example:
        >>> export_rtol(None, 1e-4), export_rtol(0.3, 1e-4)
        (0.0001, 3.0)
    """
    return max(rtol, ROUNDOFF_MARGIN * roundoff) if needs_float64(roundoff, rtol) else rtol


__all__ = ["Float64Run", "ROUNDOFF_MARGIN", "as_float64", "export_rtol", "export_verdict",
           "float64_run", "needs_float64"]
