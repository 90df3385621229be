"""``check``'s ONNX and ``.pt2`` properties: the files against eager PyTorch, on several inputs.

A file that baked in the example's output (a traced data-dependent branch, a constant-folded
input) matches there and nowhere else, so the files are also compared on an input unlike the
example, and count as verified only when that input moves the output ``SENSITIVITY_FACTOR``
times the file's own difference (docs/check.md). Where the model amplifies float32
round-off past the tolerance (:mod:`cafeslim.export.precision`), a float32 file cannot match
it, and a difference is *not verified* instead of failed. The round-off is the larger of the
full model's and the slimmed model's own: slimming can amplify it (timm's ``davit_tiny``:
2e-6 of the output at full width, 3e-5 at a random spec, whose ONNX file then differs by 1e-4).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, List, Optional

import torch
from torch import nn

from ..errors import CafeslimError
from .compare import rel_diff as _rel
from .formats import output_scale, save_onnx, save_pt2
from .precision import export_rtol, export_verdict, float64_run


def check_formats(small: nn.Module, x: torch.Tensor, out: Any, seed: int, report: Any) -> None:
    """ONNX and .pt2 parity on the example and on other inputs (a file that baked in the
    example's output matches there only); verified when those inputs move the output
    ``SENSITIVITY_FACTOR`` times the export's own difference (docs/check.md).

    Sets ``report.statuses``/``details`` of ``onnx`` and ``pt2`` and ``report.sensitivity["input"]``
    of a :class:`~cafeslim.export.verify.CheckReport`.

    Example:
        >>> check_formats(small, x, small(x), 0, report)
        >>> report.statuses["onnx"]
        'passed'
    """
    from .verify import (EQUIV_RTOL, EXPORT_NOISE, FAILED, NOT_VERIFIED, PASSED, SENSITIVITY_FACTOR,
                         _first_line)

    st, details = report.statuses, report.details
    varies, moved, others = 0.0, 0.0, []
    for i, x2 in enumerate(other_inputs(x, seed)):
        try:
            with torch.no_grad():
                change = _rel(out, small(x2), worst="min")
        except Exception:  # a model that only runs at its example input proves nothing here
            continue
        varies = max(varies, change)
        if i == 0:  # at the example's scale: 3x can drive random weights where round-off explodes
            moved, others = change, [x2]
    report.sensitivity["input"] = varies
    scale = max(output_scale(out), 1e-12)
    roundoff = _roundoff(small, x, out, report.roundoff)
    with tempfile.TemporaryDirectory() as tmp:
        for key, fn, fname in (("onnx", save_onnx, "m.onnx"), ("pt2", save_pt2, "m.pt2")):
            try:
                diff = fn(small, x, Path(tmp) / fname, rtol=export_rtol(roundoff, EQUIV_RTOL),
                          check_inputs=others)
            except CafeslimError as exc:
                st[key], details[key] = FAILED, str(exc)[:300]
                continue
            except Exception as exc:  # exporter internals
                st[key], details[key] = FAILED, f"{type(exc).__name__}: {_first_line(exc)}"
                continue
            why = export_verdict(diff, scale, roundoff, EQUIV_RTOL)
            if why:
                st[key], details[key] = NOT_VERIFIED, why
                continue
            need = min(SENSITIVITY_FACTOR * EQUIV_RTOL,
                       SENSITIVITY_FACTOR * max(diff / scale, EXPORT_NOISE))
            st[key] = PASSED if others and moved >= need else NOT_VERIFIED
            details[key] = (f"max abs diff {diff:.2e} on {1 + len(others)} inputs; the other "
                            f"input changes the output by {moved:.2e} (needs {need:.0e})")


def _roundoff(small: nn.Module, x: torch.Tensor, out: Any, full: Optional[float]) -> Optional[float]:
    """The larger float32 round-off (relative) of the full model's and the slimmed one's."""
    run = float64_run(small, x, out)
    values = [v for v in (full, run.roundoff if run is not None else None) if v is not None]
    return max(values) if values else None


def other_inputs(x: torch.Tensor, seed: int = 0) -> List[torch.Tensor]:
    """Inputs unlike ``x``, to show that a model's output depends on its input.

    Global pooling averages i.i.d. noise to nearly the same features for any two noise
    images, so images get spatially smooth noise (which moves pooled features) and ``3 * x``
    (which moves every activation of a network without input normalisation).

    Example:
        >>> len(other_inputs(torch.randn(1, 3, 224, 224)))
        2
    """
    if not x.is_floating_point():
        return []
    gen = torch.Generator().manual_seed(seed + 1)
    if x.dim() != 4:
        return [torch.randn(x.shape, generator=gen).to(x.dtype), 3 * x]
    n, c, h, w = x.shape
    coarse = torch.randn(n, c, max(1, h // 16), max(1, w // 16), generator=gen, dtype=x.dtype)
    smooth = 1.5 * torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return [smooth, 3 * x]


__all__ = ["check_formats", "other_inputs"]
