"""``cafeslim check``: will cafeslim work on this model? Every property, measured.

For a handful of random IndexSpecs (prefix and scattered channel sets) the model is slimmed
and each property the rest of the pipeline relies on is checked: the slimmed model runs
with the original output shape, it computes exactly what the full-width reference computes
(:mod:`cafeslim.export.reference`: removed channels ignored, channel norms masked), the
FLOPs model agrees with fvcore, and the ONNX and ``torch.export`` files reproduce PyTorch.

A comparison that cannot fail proves nothing, so each numeric property also proves it was
sensitive, or is reported *not verified*: the reference must differ from the full model by
at least ``SENSITIVITY_FACTOR`` times the tolerance, the exported files are compared on
inputs that move the output by that factor times their own difference, and FLOPs are compared at widths where they differ from the
full model's. The checks run on a copy whose constant or vanishing weights
:func:`cafeslim.export.sensitize.sensitize` re-drew.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import CafeslimError
from ..graph import ChannelGraph, IndexSpec, analyze
from .compare import leaf_names, rel_diff as _rel  # noqa: F401  (leaf_names: public here too)
from .formats import max_abs_diff, output_scale, save_onnx, save_pt2  # noqa: F401  (re-exported)
from .parity import check_formats, other_inputs  # noqa: F401  (other_inputs: public here too)
from .precision import Float64Run, float64_run, needs_float64
from .reference import masked_reference, zero_removed_inputs  # noqa: F401  (zero_removed_inputs: old home)
from .sensitize import sensitize as sensitize_model
from .slim import slim

PROPERTIES = ("searchable", "runs", "output_shape", "equivalence", "flops", "onnx", "pt2")
PASSED, FAILED, NOT_VERIFIED = "passed", "failed", "not verified"
EQUIV_RTOL = 1e-4
FLOPS_RTOL = 0.005
SENSITIVITY_FACTOR = 100.0
"""A comparison counts when what it would detect is at least this many tolerances away."""
EXPORT_NOISE = 1.2e-7
"""float32's machine epsilon: the least relative export difference assumed (pt2 is often exact)."""
FLOPS_MIN_CHANGE = 10 * FLOPS_RTOL
"""FLOPs are compared only at widths whose FLOPs differ from the full model's by this much."""


def overall_status(statuses: Dict[str, str]) -> str:
    """``failed`` if any property failed, ``passed`` if all passed, else ``not verified``.

    Example:
        >>> overall_status({"runs": "passed", "onnx": "not verified"})
        'not verified'
    """
    values = set(statuses.values())
    if FAILED in values:
        return FAILED
    return PASSED if values <= {PASSED} else NOT_VERIFIED


@dataclass
class CheckReport:
    """What ``cafeslim check`` found.

    Attributes:
        model: the model's name.
        statuses: property -> ``passed``, ``failed`` or ``not verified`` (the comparison could
            not have failed on this model, so it proves nothing).
        details: property -> a short human-readable measurement.
        searchable_groups, fixed_groups: group counts.
        fixed_reasons: reason -> number of fixed groups with it.
        flops, params: of the full model.
        uniform_half_flops_ratio: FLOPs at half of every searchable width over full FLOPs.
        sensitivity: ``equivalence`` (smallest relative difference between the reference
            and the full model), ``input`` (relative output change between two inputs of the
            slimmed model), ``flops`` (smallest relative FLOPs change of a checked spec).
        redrawn: number of parameters re-drawn before checking (:mod:`cafeslim.export.sensitize`).
        leaves: names of the output's tensor leaves, all of which every property compares.
        final: for a model traced in part (detection): what the comparison of the whole
            model's outputs compared (:mod:`cafeslim.export.whole`).
        roundoff: the full model's float32 output against its float64 output, relative
            (None where it does not run in float64); above 1e-5, equivalence is compared in
            float64 (:mod:`cafeslim.export.precision`).
    """

    model: str
    statuses: Dict[str, str]
    details: Dict[str, str]
    searchable_groups: int
    fixed_groups: int
    fixed_reasons: Dict[str, int] = field(default_factory=dict)
    flops: int = 0
    params: int = 0
    uniform_half_flops_ratio: Optional[float] = None
    sensitivity: Dict[str, float] = field(default_factory=dict)
    redrawn: int = 0
    leaves: List[str] = field(default_factory=list)
    final: Dict[str, Any] = field(default_factory=dict)
    roundoff: Optional[float] = None

    @property
    def status(self) -> str:
        """The overall status (see :func:`overall_status`)."""
        return overall_status(self.statuses)

    @property
    def passed(self) -> bool:
        """Every property passed (a not-verified property is not a pass)."""
        return self.status == PASSED

    @property
    def properties(self) -> Dict[str, bool]:
        """Property -> passed (the boolean view older readers of the report use)."""
        return {k: v == PASSED for k, v in self.statuses.items()}

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict (the ``cafeslim check --json`` document and a zoo results line)."""
        return {"model": self.model, "status": self.status, "passed": self.passed,
                "statuses": dict(self.statuses), "properties": self.properties,
                "details": dict(self.details),
                "sensitivity": {k: float(v) for k, v in self.sensitivity.items()},
                "searchable_groups": self.searchable_groups, "fixed_groups": self.fixed_groups,
                "fixed_reasons": dict(self.fixed_reasons), "flops": int(self.flops),
                "params": int(self.params), "uniform_half_flops_ratio": self.uniform_half_flops_ratio,
                "redrawn": self.redrawn, "leaves": list(self.leaves), "roundoff": self.roundoff, **(
                    {"final": dict(self.final)} if self.final else {})}


def random_spec(graph: ChannelGraph, rng: np.random.Generator, prefix: bool, low: float = 0.25) -> IndexSpec:
    """A random IndexSpec: every searchable group keeps between ``low`` and all but one of its
    channels (per block), so that every spec removes something and can prove sensitivity.

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
        top = max(bs - 1, 1)  # a block of one channel can only keep it
        k = int(rng.integers(min(max(1, int(np.ceil(low * bs))), top), top + 1))
        local = list(range(k)) if prefix else sorted(rng.choice(bs, size=k, replace=False).tolist())
        spec[g.id] = [b * bs + i for b in range(g.blocks) for i in local]
    return spec


@dataclass
class _Tally:
    """Worst-case numbers over the checked specs, one per numeric property."""

    eq_diff: float = 0.0
    eq_sens: float = float("inf")
    eq_unverified: str = ""
    eq_error: str = ""
    flops_err: float = 0.0
    flops_change: float = float("inf")
    exact: Optional[Float64Run] = None  # the float64 model to compare in (float32 round-off too large)


def check_info(info: Any, **options: Any) -> CheckReport:
    """:func:`check_model` on a created model: its traced part, and its final outputs.

    A model traced in part (``info.part``, a detection backbone) is checked on that part, and
    the whole model's outputs on ``info.model_inputs()`` are compared as well
    (property ``final_outputs``, :func:`cafeslim.export.whole.compare_whole`).

    Example:
        >>> check_info(create("tv:ssdlite320_mobilenet_v3_large")).statuses["final_outputs"]  # doctest: +SKIP
        'passed'
    """
    whole = (info.model, info.part, info.model_inputs()) if info.part else None
    return check_model(info.analysed, info.example_input(), info.name, whole=whole,
                       output_reason=info.output_reason, **options)


def check_model(model: nn.Module, example_input: torch.Tensor, name: str = "", *, n_specs: int = 3,
                seed: int = 0, formats: bool = True, sensitize: bool = True,
                whole: Optional[Tuple[nn.Module, str, Tuple[Any, ...]]] = None,
                output_reason: str = "model output") -> CheckReport:
    """Analyse, slim at random IndexSpecs and verify every property, with proof of sensitivity.

    Args:
        model: the model (put in eval mode; never modified otherwise).
        example_input: an input batch of the model's own size.
        name: for the report.
        n_specs: number of random specs (alternating prefix and scattered).
        seed: random seed for the specs, the re-drawn weights and the second input.
        formats: also check ONNX and ``torch.export`` round trips (on the first spec).
        sensitize: check on a copy with constant or vanishing weights re-drawn (the default;
            off, a zero-initialised head makes every comparison vacuous: *not verified*).
        whole: ``(whole model, qualname of model in it, its inputs)`` when ``model`` is the
            traced part of a larger model: its final outputs are compared too.
        output_reason: why the output channels are fixed (see :func:`~cafeslim.graph.analyze`).

    Returns:
        A :class:`CheckReport`.

    Example:
        >>> report = check_model(timm.create_model("test_resnet"), torch.randn(1, 3, 160, 160))
        >>> report.status
        'passed'
    """
    from ..flops import FlopsModel, count_flops, count_params

    model.eval()
    probe = sensitize_model(model, example_input, seed) if sensitize else model
    graph = analyze(probe, example_input, source=name, output_reason=output_reason)
    st: Dict[str, str] = {p: PASSED for p in PROPERTIES + (("final_outputs",) if whole else ())}
    details: Dict[str, str] = {}
    reasons = Counter(r for g in graph.fixed for r in g.reasons)
    report = CheckReport(name, st, details, len(graph.searchable), len(graph.fixed), dict(reasons),
                         params=count_params(model), redrawn=len(getattr(probe, "cafeslim_redrawn", [])))
    details["searchable"] = f"{len(graph.searchable)} searchable, {len(graph.fixed)} fixed groups"
    if not graph.searchable:
        report.flops = count_flops(probe, example_input)
        st["searchable"] = FAILED
        _mark(st, details, PROPERTIES[1:], NOT_VERIFIED, "no searchable group")
        return report
    fm = FlopsModel(graph, probe, example_input)
    # FlopsModel ran fvcore on the full model already (to cost opaque ops); no second count
    full_flops = float(fm.fvcore_full if fm.fvcore_full is not None else count_flops(probe, example_input))
    report.flops = int(full_flops)
    half = {g.id: max(g.blocks, (g.channels // 2) // g.blocks * g.blocks) for g in graph.searchable}
    report.uniform_half_flops_ratio = float(fm.flops(half) / fm.full) if fm.full else None
    with torch.no_grad():
        ref_full = probe(example_input)
    run = float64_run(probe, example_input, ref_full)
    report.roundoff = run.roundoff if run is not None else None
    tally = _Tally(exact=run if run is not None and needs_float64(run.roundoff, EQUIV_RTOL) else None)
    if not _check_specs(report, probe, graph, fm, example_input, ref_full, full_flops, tally,
                        n_specs=n_specs, seed=seed, formats=formats, whole=whole):
        return report
    details.setdefault("runs", f"{n_specs} specs")
    names = leaf_names(ref_full)
    details.setdefault("output_shape", f"{_shape(ref_full)}" if len(names) == 1 else
                       f"{_shape(ref_full)}; every property compares all {len(names)} tensor "
                       f"leaves: {', '.join(names[:12])}{' …' if len(names) > 12 else ''}")
    report.leaves = names
    _finish(report, tally)
    return report


def _check_specs(report: CheckReport, probe: nn.Module, graph: ChannelGraph, fm: Any,
                 example_input: torch.Tensor, ref_full: Any, full_flops: float, tally: "_Tally", *,
                 n_specs: int, seed: int, formats: bool,
                 whole: Optional[Tuple[nn.Module, str, Tuple[Any, ...]]]) -> bool:
    """Slim at ``n_specs`` random specs and check each; False when a slimmed model does not run."""
    from ..flops import count_flops

    st, details = report.statuses, report.details
    rng = np.random.default_rng(seed)
    for i in range(n_specs):
        spec = random_spec(graph, rng, prefix=(i % 2 == 0))
        try:
            small = slim(probe, graph, spec).eval()
            with torch.no_grad():
                out = small(example_input)
        except Exception as exc:  # a slimmed model that does not run is what check reports
            # (a SpecError here too: the specs come from the graph, so the graph is inconsistent)
            st["runs"] = FAILED
            details["runs"] = f"spec {i}: {type(exc).__name__}: {_first_line(exc)}"
            _mark(st, details, [p for p in st if p not in ("searchable", "runs")], NOT_VERIFIED,
                  "slimmed model does not run")
            return False
        if _shape(out) != _shape(ref_full):
            st["output_shape"] = FAILED
            details["output_shape"] = f"{_shape(out)} != {_shape(ref_full)}"
        else:
            _equivalence(probe, graph, spec, example_input, out, ref_full, tally)
        measured = float(count_flops(small, example_input))
        tally.flops_err = max(tally.flops_err, abs(fm.flops(graph.widths_of(spec)) - measured) / max(measured, 1))
        tally.flops_change = min(tally.flops_change, abs(full_flops - measured) / max(full_flops, 1))
        if i == 0 and formats:
            check_formats(small, example_input, out, seed, report)
        if i == 0 and whole is not None:
            from .whole import check_whole

            check_whole(report, whole, probe, graph, spec)
    return True


def _mark(st: Dict[str, str], details: Dict[str, str], props, status: str, why: str) -> None:
    for p in props:
        st[p] = status
        details.setdefault(p, why)


def _equivalence(probe: nn.Module, graph: ChannelGraph, spec: IndexSpec, x: torch.Tensor, out: Any,
                 ref_full: Any, tally: _Tally) -> None:
    """Compare one slimmed output with its full-width reference; keep the worst numbers."""
    if tally.exact is not None:  # the model amplifies float32 round-off past the tolerance
        probe, x, ref_full = tally.exact.model, tally.exact.x, tally.exact.out
        with torch.no_grad():
            out = slim(probe, graph, spec).eval()(x)
    try:
        ref, unpatched = masked_reference(probe, graph, spec, x)
    except Exception as exc:  # an index the graph got wrong, out of the tensor's range
        tally.eq_error = tally.eq_error or f"reference: {type(exc).__name__}: {_first_line(exc)}"
        return
    if unpatched:
        tally.eq_unverified = f"cannot mask the statistics of {', '.join(unpatched[:3])}"
        return
    try:
        tally.eq_diff = max(tally.eq_diff, _rel(ref, out))
    except CafeslimError as exc:  # different number or shapes of outputs
        tally.eq_error = tally.eq_error or str(exc)
    tally.eq_sens = min(tally.eq_sens, _rel(ref_full, ref, worst="min"))


def _finish(report: CheckReport, t: _Tally) -> None:
    """Turn the tallies into statuses and details for equivalence and FLOPs."""
    st, details = report.statuses, report.details
    need = SENSITIVITY_FACTOR * EQUIV_RTOL
    how = (f"; in float64, as float32 round-off alone moves the output by {t.exact.roundoff:.1e}"
           if t.exact is not None else "")
    if st["output_shape"] != PASSED:
        _mark(st, details, ("equivalence",), NOT_VERIFIED, "output shape differs")
    elif t.eq_error:
        st["equivalence"], details["equivalence"] = FAILED, t.eq_error[:300]
    elif t.eq_diff > EQUIV_RTOL or t.eq_diff != t.eq_diff:
        st["equivalence"] = FAILED
        details["equivalence"] = f"max rel diff {t.eq_diff:.2e} (limit {EQUIV_RTOL:.0e}){how}"
    elif t.eq_unverified:
        st["equivalence"], details["equivalence"] = NOT_VERIFIED, t.eq_unverified
    else:
        report.sensitivity["equivalence"] = t.eq_sens
        st["equivalence"] = PASSED if t.eq_sens >= need else NOT_VERIFIED
        details["equivalence"] = (f"max rel diff {t.eq_diff:.2e} (limit {EQUIV_RTOL:.0e}); removing channels "
                                  f"changes the output by {t.eq_sens:.2e} (needs {need:.0e}){how}")
    if t.flops_change != float("inf"):
        report.sensitivity["flops"] = t.flops_change
    st["flops"] = (FAILED if t.flops_err > FLOPS_RTOL else PASSED if t.flops_change >= FLOPS_MIN_CHANGE
                   else NOT_VERIFIED)
    details["flops"] = (f"FlopsModel vs fvcore: worst {100 * t.flops_err:.3f}% (limit {100 * FLOPS_RTOL:.1f}%) "
                        f"at widths {100 * t.flops_change:.0f}% or more below full FLOPs "
                        f"(needs {100 * FLOPS_MIN_CHANGE:.0f}%)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _shape(out) -> List:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (list, tuple)):
        return [_shape(o) for o in out]
    if isinstance(out, dict):
        return {k: _shape(v) for k, v in out.items()}
    return []
