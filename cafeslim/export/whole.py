"""Models traced in part: slim the traced sub-module in place, compare the whole model's outputs.

A detection model does not trace as a whole (image-list transform, anchors, NMS), so its
``backbone`` is analysed on the transformed image batch (``ModelInfo.part``). Slimming
replaces that sub-module of a copy of the whole model by its slimmed form: the result still
takes a list of images and returns ``boxes``/``labels``/``scores`` (masks, keypoints) exactly
as before. ``check`` compares the traced part's raw outputs (every property of
:mod:`cafeslim.export.verify`) and, with :func:`compare_whole`, the whole model's final
outputs on a fixed input against the whole model whose part computes the masked reference.

Example:
    >>> small = slim_whole(info.model, info.part, graph, spec)            # doctest: +SKIP
    >>> small(*info.model_inputs())[0].keys()                             # doctest: +SKIP
    dict_keys(['boxes', 'scores', 'labels'])
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ..graph.channel_graph import ChannelGraph
from .reference import masked_reference
from .slim import slim

FINAL_RTOL = 1e-4
"""Tolerance of the final outputs, relative to each leaf's scale (boxes, scores, masks)."""


def slim_whole(model: nn.Module, part: str, graph: ChannelGraph,
               spec: Mapping[int, Sequence[int]]) -> nn.Module:
    """A copy of ``model`` whose sub-module ``part`` is slimmed to ``spec`` (``graph`` is its graph).

    Args:
        model: the whole model (not modified).
        part: qualname of the traced sub-module ("" slims the whole model).
        graph: the channel graph of that sub-module.
        spec: searchable group id -> kept channel indices.

    Example:
        >>> small = slim_whole(model, "backbone", graph, spec)            # doctest: +SKIP
    """
    if not part:
        return slim(model, graph, spec)
    small_part = slim(model.get_submodule(part), graph, spec)
    return with_part(model, part, small_part)


def with_part(model: nn.Module, part: str, module: nn.Module) -> nn.Module:
    """A copy of ``model`` with ``module`` in place of its sub-module ``part`` (not copied twice)."""
    original = model.get_submodule(part)
    # deepcopy's memo maps the old part to the new one, so the big part is never copied
    new = copy.deepcopy(model, memo={id(original): module})
    return new


class _ReferencePart(nn.Module):
    """Stands in for a traced part: computes its full-width masked reference for one spec."""

    def __init__(self, part: nn.Module, graph: ChannelGraph, spec: Mapping[int, Sequence[int]]):
        super().__init__()
        self.part, self.graph, self.spec = part, graph, spec
        self.unpatched: List[str] = []

    def forward(self, x: torch.Tensor) -> Any:
        out, unpatched = masked_reference(self.part, self.graph, self.spec, x)
        self.unpatched = unpatched
        return out


def _detections_sorted(out: Any) -> Any:
    """Per-image detections ordered by (score, label) so that equal sets compare equal."""
    if not (isinstance(out, list) and out and isinstance(out[0], dict) and "scores" in out[0]):
        return out
    sorted_out = []
    for det in out:
        n = det["scores"].shape[0]
        key = det["scores"].double() + det.get("labels", torch.zeros(n)).double() * 1e-9
        order = torch.argsort(key, descending=True, stable=True)
        sorted_out.append({k: (v[order] if isinstance(v, torch.Tensor) and v.shape[:1] == (n,) else v)
                           for k, v in det.items()})
    return sorted_out


def low_thresholds(model: nn.Module) -> List[str]:
    """Set every detection score threshold of ``model`` to 0 (a copy's: modified in place).

    A randomly initialised detector scores every box below its 0.05 threshold and returns
    no box at all, which would make the final-output comparison vacuous.
    """
    changed = []
    for name, mod in model.named_modules():
        for attr in ("score_thresh", "box_score_thresh"):
            if isinstance(getattr(mod, attr, None), float) and getattr(mod, attr) > 0:
                setattr(mod, attr, 0.0)
                changed.append(f"{name or 'model'}.{attr}")
    return changed


def compare_whole(whole: nn.Module, part: str, graph: ChannelGraph, spec: Mapping[int, Sequence[int]],
                  inputs: Tuple[Any, ...]) -> Dict[str, Any]:
    """Run the slimmed whole model and its masked reference on ``inputs``; compare every leaf.

    Args:
        whole: a copy of the whole model whose ``part`` is the analysed (sensitised) module;
            its detection score thresholds are set to 0 (:func:`low_thresholds`).
        part: qualname of the traced part; graph, spec: its graph and the checked spec.
        inputs: the whole model's positional arguments (``ModelInfo.model_inputs()``).

    Returns:
        ``{"status", "detail", "leaves", "max_rel", "sensitivity"}``: passed when every
        tensor leaf (detections sorted by score) is within :data:`FINAL_RTOL` of its scale
        and the reference's outputs differ from the full model's by 100× that.
    """
    from .verify import FAILED, NOT_VERIFIED, PASSED, SENSITIVITY_FACTOR, _rel, leaf_names

    whole.eval()
    lowered = low_thresholds(whole)
    small = slim_whole(whole, part, graph, spec).eval()
    ref_part = _ReferencePart(whole.get_submodule(part), graph, spec)
    ref_model = with_part(whole, part, ref_part).eval()
    with torch.no_grad():
        full = _detections_sorted(whole(*inputs))
        out = _detections_sorted(small(*inputs))
        ref = _detections_sorted(ref_model(*inputs))
    names = leaf_names(ref)
    doc: Dict[str, Any] = {"leaves": names, "thresholds_lowered": lowered}
    if ref_part.unpatched:
        return {**doc, "status": NOT_VERIFIED,
                "detail": f"cannot mask the statistics of {', '.join(ref_part.unpatched[:3])}"}
    try:
        diff = _rel(ref, out)
    except Exception as exc:  # a different number of detections or of outputs
        return {**doc, "status": FAILED, "detail": f"final outputs differ in structure: {exc}"}
    try:
        # any leaf: labels are discrete and may all stay the same while boxes and scores move
        sens = _rel(full, ref, worst="max")
    except Exception:  # the reference returns other detections than the full model: sensitive
        sens = float("inf")
    need = SENSITIVITY_FACTOR * FINAL_RTOL
    status = FAILED if not diff <= FINAL_RTOL else PASSED if sens >= need else NOT_VERIFIED
    shown = ", ".join(names[:6]) + (f" … ({len(names)} leaves)" if len(names) > 6 else "")
    detail = (f"whole model on a fixed input: {shown}; max rel diff {diff:.2e} (limit "
              f"{FINAL_RTOL:.0e}); removing channels changes them by {sens:.2e} (needs {need:.0e})")
    return {**doc, "status": status, "detail": detail, "max_rel": diff, "sensitivity": sens}


WHOLE_EXPORT_GAPS = {
    "pt2": "torch.export stops at a data-dependent guard in NMS (torchvision's batched_nms "
           "picks its implementation on boxes.numel() > 4000 of a data-dependent size)",
    "onnx": "the traced ONNX graph of a detector bakes in data-dependent shapes of the "
            "post-processing; onnxruntime's boxes then differ from PyTorch's",
}
"""Why ``.pt2``/``.onnx`` of a whole detection model are not written (the traced part's are)."""


def export_whole(small: nn.Module, part: str, x: torch.Tensor, inputs: Tuple[Any, ...], out_dir: Any,
                 formats: set, meta: Any) -> Any:
    """Write a model slimmed in part: ``model.pt`` of the whole model, ``PART/model.{pt2,onnx}``.

    The whole model (a list of images in, detections out) is pickled to ``model.pt`` after
    one run on ``inputs``; ``.pt2`` and ``.onnx`` are written for the traced part, whose
    exports are checked against PyTorch on ``x``, because torch's exporters do not handle the
    whole detector (:data:`WHOLE_EXPORT_GAPS`).

    Example:
        >>> res = export_whole(small, "backbone", x, info.model_inputs(), "out", {"pt", "onnx"}, meta)  # doctest: +SKIP
    """
    from pathlib import Path

    from .formats import export_model

    out = Path(out_dir)
    res = export_model(small, inputs, out, set(formats) & {"pt"}, meta)
    rest = set(formats) - {"pt"}
    if rest:
        sub = export_model(small.get_submodule(part), x, out / part, rest, None)
        res.paths.update(sub.paths)
        res.max_abs.update(sub.max_abs)
        res.parity.update(sub.parity)
        res.errors.update({k: f"{part}: {v}" for k, v in sub.errors.items()})
    return res


__all__ = ["FINAL_RTOL", "WHOLE_EXPORT_GAPS", "compare_whole", "export_whole", "low_thresholds", "slim_whole", "with_part"]
