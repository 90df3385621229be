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


CHECK_TOPK = 20
"""Candidates per level and detections per image kept by a checked detector's copy."""


def low_thresholds(model: nn.Module) -> List[str]:
    """Make a copy's post-processing decidable: thresholds 0, few well-separated candidates.

    A randomly initialised detector scores every box below its 0.05 threshold and returns
    no box at all, which would make the final-output comparison vacuous; and its scores are
    so close to each other that top-k over thousands of candidates reorders on rounding-level
    differences. With the score thresholds at 0 and at most :data:`CHECK_TOPK` candidates
    per level and detections per image, the kept boxes are the clearly highest-scoring ones.
    ``model`` (a copy) is modified in place; returns what was changed.
    """
    changed = []
    for name, mod in model.named_modules():
        for attr in ("score_thresh", "box_score_thresh"):
            if isinstance(getattr(mod, attr, None), float) and getattr(mod, attr) > 0:
                setattr(mod, attr, 0.0)
                changed.append(f"{name or 'model'}.{attr}=0")
        for attr in ("topk_candidates", "detections_per_img"):
            if isinstance(getattr(mod, attr, None), int) and getattr(mod, attr) > CHECK_TOPK:
                setattr(mod, attr, CHECK_TOPK)
                changed.append(f"{name or 'model'}.{attr}={CHECK_TOPK}")
    return changed


RAW_HEADS = ("head", "rpn.head")
"""Sub-modules whose outputs are raw, before any post-processing: RetinaNet/FCOS/SSD's
``head``, the R-CNNs' region proposal head (their ROI heads run on proposals after NMS)."""


def _run_capturing(model: nn.Module, inputs: Tuple[Any, ...]) -> Tuple[Any, Dict[str, Any]]:
    """The model's output and the outputs of its :data:`RAW_HEADS` during that run."""
    raw: Dict[str, Any] = {}
    hooks = []
    for name in RAW_HEADS:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        hooks.append(mod.register_forward_hook(lambda m, a, o, name=name: raw.setdefault(name, o)))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return _detections_sorted(out), raw


def compare_whole(whole: nn.Module, part: str, graph: ChannelGraph, spec: Mapping[int, Sequence[int]],
                  inputs: Tuple[Any, ...]) -> Dict[str, Any]:
    """Run the slimmed whole model and its masked reference on ``inputs``; compare every leaf.

    Compared: the raw outputs of the detection heads (:data:`RAW_HEADS`, before anchors,
    top-k and NMS) and the final outputs (detections sorted by score).

    Args:
        whole: a copy of the whole model whose ``part`` is the analysed (sensitised) module;
            its detection score thresholds are set to 0 (:func:`low_thresholds`).
        part: qualname of the traced part; graph, spec: its graph and the checked spec.
        inputs: the whole model's positional arguments (``ModelInfo.model_inputs()``).

    Returns:
        ``{"status", "detail", "leaves", "raw_heads", "max_rel", "sensitivity"}``: passed when
        every leaf of the raw head outputs and of the final outputs is within
        :data:`FINAL_RTOL` of its scale and the reference's outputs differ from the full
        model's by 100× that; *not verified* when the raw head outputs agree but the final
        detections do not: top-k and NMS over the near-equal scores of a random-weight head
        reorder on differences at rounding level, so the final comparison cannot decide.
    """
    from .compare import leaf_names, rel_diff as _rel
    from .verify import FAILED, NOT_VERIFIED, PASSED, SENSITIVITY_FACTOR

    whole.eval()
    lowered = low_thresholds(whole)
    small = slim_whole(whole, part, graph, spec).eval()
    ref_part = _ReferencePart(whole.get_submodule(part), graph, spec)
    ref_model = with_part(whole, part, ref_part).eval()
    full, _ = _run_capturing(whole, inputs)
    out, raw_out = _run_capturing(small, inputs)
    ref, raw_ref = _run_capturing(ref_model, inputs)
    names = leaf_names(ref)
    doc: Dict[str, Any] = {"leaves": names, "raw_heads": sorted(raw_ref), "thresholds_lowered": lowered}
    if ref_part.unpatched:
        return {**doc, "status": NOT_VERIFIED,
                "detail": f"cannot mask the statistics of {', '.join(ref_part.unpatched[:3])}"}
    try:
        raw_diff = _rel(raw_ref, raw_out) if raw_ref else 0.0
    except Exception as exc:
        return {**doc, "status": FAILED, "detail": f"raw head outputs differ in structure: {exc}"}
    try:
        diff = _rel(ref, out)
    except Exception:  # a different number of detections: post-processing ties (see below)
        diff = float("inf")
    try:
        # any leaf: labels are discrete and may all stay the same while boxes and scores move
        sens = _rel(full, ref, worst="max")
    except Exception:  # the reference returns other detections than the full model: sensitive
        sens = float("inf")
    need = SENSITIVITY_FACTOR * FINAL_RTOL
    shown = ", ".join(names[:6]) + (f" … ({len(names)} leaves)" if len(names) > 6 else "")
    heads = (f"raw outputs of {', '.join(sorted(raw_ref))}: max rel diff {raw_diff:.2e}; "
             if raw_ref else "")
    if not raw_diff <= FINAL_RTOL:
        status = FAILED
    elif not diff <= FINAL_RTOL:
        status = NOT_VERIFIED if raw_ref else FAILED
    else:
        status = PASSED if sens >= need else NOT_VERIFIED
    final = (f"final outputs {shown}: max rel diff {diff:.2e}" if diff != float("inf") else
             f"final outputs {shown}: other detections")
    tie = (" (top-k/NMS ties over the near-equal scores of a random-weight head)"
           if status == NOT_VERIFIED and raw_ref and not diff <= FINAL_RTOL else "")
    detail = (f"whole model on a fixed input: {heads}{final}{tie} (limit {FINAL_RTOL:.0e}); "
              f"removing channels changes them by {sens:.2e} (needs {need:.0e})")
    finite = lambda v: v if v != float("inf") else None  # noqa: E731  (JSON has no Infinity)
    return {**doc, "status": status, "detail": detail, "max_rel": finite(diff),
            "raw_max_rel": raw_diff, "sensitivity": finite(sens)}


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


def check_whole(report: Any, whole: Tuple[nn.Module, str, Tuple[Any, ...]], probe: nn.Module,
                graph: ChannelGraph, spec: Any) -> None:
    """``check``'s ``final_outputs``: the whole model with the slimmed part vs the masked reference."""
    from .verify import FAILED, _first_line

    model, part, inputs = whole
    try:
        report.final = compare_whole(with_part(model, part, probe), part, graph, spec, inputs)
    except Exception as exc:  # the whole model does not run with the slimmed part
        report.final = {"status": FAILED, "detail": f"{type(exc).__name__}: {_first_line(exc)}"}
    report.statuses["final_outputs"] = report.final["status"]
    report.details["final_outputs"] = report.final["detail"]
