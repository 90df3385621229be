"""``cafeslim check``: will cafeslim work on this model? Every property, measured.

For a handful of random IndexSpecs (prefix and scattered channel sets) the model is slimmed
and each property the rest of the pipeline relies on is checked: the slimmed model runs
with the original output shape, it computes exactly what the original computes with the
removed channels' input weights zeroed, the FLOPs model agrees with fvcore, and the ONNX and
``torch.export`` files reproduce PyTorch.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CafeslimError
from ..graph import ChannelGraph, IndexSpec, analyze
from .formats import max_abs_diff, output_scale, save_onnx, save_pt2
from .slim import slim

PROPERTIES = ("searchable", "runs", "output_shape", "equivalence", "flops", "onnx", "pt2")
EQUIV_RTOL = 1e-4
FLOPS_RTOL = 0.005


@dataclass
class CheckReport:
    """What ``cafeslim check`` found.

    Attributes:
        model: the model's name.
        passed: every property holds.
        properties: property -> True/False (``equivalence`` is True and marked n/a in
            ``details`` when a searchable group is normalised by LayerNorm/GroupNorm).
        details: property -> a short human-readable measurement.
        searchable_groups, fixed_groups: group counts.
        fixed_reasons: reason -> number of fixed groups with it.
        flops, params: of the full model.
    """

    model: str
    passed: bool
    properties: Dict[str, bool]
    details: Dict[str, str]
    searchable_groups: int
    fixed_groups: int
    fixed_reasons: Dict[str, int] = field(default_factory=dict)
    flops: int = 0
    params: int = 0
    uniform_half_flops_ratio: Optional[float] = None

    def to_json(self) -> Dict:
        return {"model": self.model, "passed": self.passed, "properties": self.properties,
                "details": self.details, "searchable_groups": self.searchable_groups,
                "fixed_groups": self.fixed_groups, "fixed_reasons": self.fixed_reasons,
                "flops": self.flops, "params": self.params,
                "uniform_half_flops_ratio": self.uniform_half_flops_ratio}


def random_spec(graph: ChannelGraph, rng: np.random.Generator, prefix: bool, low: float = 0.25) -> IndexSpec:
    """A random IndexSpec: every searchable group keeps between ``low`` and all of its channels.

    Args:
        graph: the channel graph.
        rng: numpy random generator.
        prefix: keep the first channels (the fixed pattern) instead of a scattered subset.
        low: smallest kept fraction.

    Example:
        >>> spec = random_spec(graph, np.random.default_rng(0), prefix=False)
    """
    spec: IndexSpec = {}
    for g in graph.searchable:
        bs = g.block_size
        k = int(rng.integers(max(1, int(np.ceil(low * bs))), bs + 1))
        local = list(range(k)) if prefix else sorted(rng.choice(bs, size=k, replace=False).tolist())
        spec[g.id] = [b * bs + i for b in range(g.blocks) for i in local]
    return spec


def zero_removed_inputs(model: nn.Module, graph: ChannelGraph, spec: Mapping[int, Sequence[int]]) -> nn.Module:
    """A copy of ``model`` whose consumers ignore the channels ``spec`` removes.

    Every member with role ``in``/``in_std`` (a conv/linear input axis) gets zeros at the removed
    channels; the slimmed model must then compute exactly the same function.
    """
    zeroed = copy.deepcopy(model)
    tensors = dict(zeroed.named_parameters())
    tensors.update(dict(zeroed.named_buffers()))
    with torch.no_grad():
        for gid, kept in spec.items():
            g = graph.groups[gid]
            removed = sorted(set(range(g.channels)) - set(kept))
            if not removed:
                continue
            for m in g.members:
                if m.role not in ("in", "in_std"):
                    continue
                t = tensors[m.qualname]
                local = [c for c in removed if c < g.block_size] if m.blocks > 1 else removed
                pos = [m.offset + c * m.inner + j for c in local for j in range(m.inner)]
                idx = torch.tensor(pos, dtype=torch.long)
                t.index_fill_(m.axis, idx, 0.0)
    return zeroed


def _has_channel_norm(graph: ChannelGraph, model: nn.Module) -> bool:
    """LayerNorm/GroupNorm statistics (and weight standardisation) change when channels go;
    equivalence with zeroed inputs cannot hold there."""
    mods = dict(model.named_modules())
    for g in graph.searchable:
        for m in g.members:
            if m.role == "in_std":
                return True
            if m.role in ("norm", "attr") and isinstance(mods.get(m.module), (nn.LayerNorm, nn.GroupNorm)):
                return True
            if m.role in ("norm", "attr") and "LayerNorm" in type(mods.get(m.module)).__name__:
                return True
    return False


def check_model(model: nn.Module, example_input: torch.Tensor, name: str = "", *, n_specs: int = 3,
                seed: int = 0, formats: bool = True) -> CheckReport:
    """Analyse, slim at random IndexSpecs and verify every property.

    Args:
        model: the model (put in eval mode).
        example_input: an input batch of the model's own size.
        name: for the report.
        n_specs: number of random specs (alternating prefix and scattered).
        seed: random seed for the specs.
        formats: also check ONNX and ``torch.export`` round trips (on the first spec).

    Returns:
        A :class:`CheckReport`.

    Example:
        >>> report = check_model(timm.create_model("test_resnet"), torch.randn(1, 3, 160, 160))
        >>> report.passed
        True
    """
    from ..flops import FlopsModel, count_flops, count_params

    model.eval()
    graph = analyze(model, example_input, source=name)
    props: Dict[str, bool] = {p: True for p in PROPERTIES}
    details: Dict[str, str] = {}
    reasons: Dict[str, int] = {}
    for g in graph.fixed:
        for r in g.reasons:
            reasons[r] = reasons.get(r, 0) + 1
    report = CheckReport(name, False, props, details, len(graph.searchable), len(graph.fixed), reasons)
    report.params = count_params(model)
    props["searchable"] = bool(graph.searchable)
    details["searchable"] = f"{len(graph.searchable)} searchable, {len(graph.fixed)} fixed groups"
    if not graph.searchable:
        report.flops = count_flops(model, example_input)
        for p in PROPERTIES[1:]:
            props[p] = False
            details[p] = "no searchable group"
        return report
    fm = FlopsModel(graph, model, example_input)
    # FlopsModel ran fvcore on the full model already (to cost opaque ops); no second count
    report.flops = int(fm.fvcore_full if fm.fvcore_full is not None else count_flops(model, example_input))
    half = {g.id: max(g.blocks, (g.channels // 2) // g.blocks * g.blocks) for g in graph.searchable}
    report.uniform_half_flops_ratio = float(fm.flops(half) / fm.full) if fm.full else None
    with torch.no_grad():
        ref_full = model(example_input)
    rng = np.random.default_rng(seed)
    worst_eq, worst_flops = 0.0, 0.0
    skip_eq = _has_channel_norm(graph, model)
    for i in range(n_specs):
        spec = random_spec(graph, rng, prefix=(i % 2 == 0))
        try:
            small = slim(model, graph, spec).eval()
            with torch.no_grad():
                out = small(example_input)
        except CafeslimError:
            raise
        except Exception as exc:  # a slimmed model that does not run is what check reports
            props["runs"] = False
            details["runs"] = f"spec {i}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            for p in ("output_shape", "equivalence", "flops", "onnx", "pt2"):
                props[p] = False
                details.setdefault(p, "slimmed model does not run")
            break
        if _shape(out) != _shape(ref_full):
            props["output_shape"] = False
            details["output_shape"] = f"{_shape(out)} != {_shape(ref_full)}"
        elif not skip_eq:
            with torch.no_grad():
                ref = zero_removed_inputs(model, graph, spec).eval()(example_input)
            rel = max_abs_diff(ref, [out]) / max(output_scale(ref), 1e-12)
            worst_eq = max(worst_eq, rel)
        predicted = fm.flops(graph.widths_of(spec))
        measured = count_flops(small, example_input)
        worst_flops = max(worst_flops, abs(predicted - measured) / max(measured, 1))
        if i == 0 and formats:
            _check_formats(small, example_input, props, details)
    if props["runs"]:
        props["equivalence"] = skip_eq or worst_eq <= EQUIV_RTOL
        details["equivalence"] = ("n/a: LayerNorm/GroupNorm/weight standardisation over searchable channels" if skip_eq
                                  else f"max rel diff {worst_eq:.2e} (limit {EQUIV_RTOL:.0e})")
        props["flops"] = worst_flops <= FLOPS_RTOL
        details["flops"] = f"FlopsModel vs fvcore: worst {100 * worst_flops:.3f}% (limit {100 * FLOPS_RTOL:.1f}%)"
        details.setdefault("runs", f"{n_specs} specs")
        details.setdefault("output_shape", f"{_shape(ref_full)}")
    report.passed = all(props.values())
    return report


def _check_formats(small: nn.Module, x: torch.Tensor, props: Dict[str, bool], details: Dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for key, fn, fname in (("onnx", save_onnx, "m.onnx"), ("pt2", save_pt2, "m.pt2")):
            try:
                diff = fn(small, x, Path(tmp) / fname, rtol=EQUIV_RTOL)
                details[key] = f"max abs diff {diff:.2e}"
            except CafeslimError as exc:
                props[key] = False
                details[key] = str(exc)[:300]
            except Exception as exc:  # exporter internals
                props[key] = False
                details[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _shape(out) -> List:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (list, tuple)):
        return [_shape(o) for o in out]
    if isinstance(out, dict):
        return {k: _shape(v) for k, v in out.items()}
    return []
