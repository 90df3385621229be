"""Multi-stage search (Eq. 10, Algorithm 1): shrink the supernet to each stage's result.

Stage ``t = 1..T`` trains the supernet on its search space and searches under

    FLOPs(t) = FLOPs(0) - (FLOPs(0) - F_b) · t / T,        β(t+1) = β(t) / α,

where ``FLOPs(0)`` is the full model and ``F_b`` the target. After stage ``t`` the search space
shrinks to the sub-network it found: every group keeps only the chosen channels (in their
importance order) and those are re-binned with the smaller β, so the search goes from coarse
bins over the whole model to fine bins around the previous answer (A.14, A.15).

**Representation.** A shrunk space is an ordinary :class:`~cafeslim.bins.SearchSpace` whose
groups are :class:`SubGroupBins`: ``order`` lists the kept channels (original local indices,
most important first) and ``bounds`` cover only those positions, so ``width(k)``,
``width_matrix``, the FLOPs window, candidates and :meth:`SearchSpace.fixed_spec` work
unchanged, and every candidate IndexSpec still indexes the *original* model's channels — the
supernet, the fitness and export need no change. ``channels`` is the kept count (per block);
``stride`` is the original block size, which a blocked group needs to place its blocks.

Sensitivities of the shrunk space are marginal FLOPs at the previous result's widths (the
shrunk supernet's "full" width), the generalisation of Eq. 7 that :mod:`cafeslim.bins.make`
uses at the full model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..graph import IndexSpec, spec_from_json, spec_to_json
from ..bins.space import GroupBins, SearchSpace


@dataclass(frozen=True)
class SubGroupBins(GroupBins):
    """Bins over a subset of a group's channels (see the module docstring).

    Attributes:
        stride: the original block size (local channels per block of the model's group).
    """

    stride: int = 0

    def channel_indices(self, bins: Sequence[int]) -> List[int]:
        local = self.local_channels(bins)
        size = self.stride or self.bounds[-1][1]
        return [blk * size + i for blk in range(self.blocks) for i in local]


@dataclass(frozen=True)
class Stage:
    """One stage of Eq. 10: its 1-based index, FLOPs budget and bin size β."""

    index: int
    budget: float
    beta: float


def stage_budgets(full_flops: float, target: float, stages: int) -> List[float]:
    """``FLOPs(t)`` for ``t = 1..T`` (Eq. 10): linear from the full model to the target.

    Example:
        >>> stage_budgets(100.0, 40.0, 3)
        [80.0, 60.0, 40.0]
    """
    if stages < 1:
        raise ConfigError(f"stages must be >= 1, got {stages}")
    if not 0 < target <= full_flops:
        raise ConfigError(f"the target FLOPs must be in (0, full], got {target} of {full_flops}")
    out = [full_flops - (full_flops - target) * t / stages for t in range(1, stages + 1)]
    out[-1] = float(target)  # exactly the target, whatever the rounding
    return out


def stage_betas(beta: float, alpha: float, stages: int) -> List[float]:
    """β of each stage: ``β, β/α, β/α², ...`` (Eq. 10).

    Example:
        >>> stage_betas(1.0, 2.0, 3)
        [1.0, 0.5, 0.25]
    """
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    return [beta / alpha ** j for j in range(stages)]


def plan_stages(full_flops: float, target: float, stages: int, beta: float, alpha: float) -> List[Stage]:
    """Budgets and β of every stage.

    Example:
        >>> [(s.budget, s.beta) for s in plan_stages(100.0, 40.0, 2, 1.0, 2.0)]
        [(70.0, 1.0), (40.0, 0.5)]
    """
    return [Stage(t + 1, b, be) for t, (b, be) in
            enumerate(zip(stage_budgets(full_flops, target, stages), stage_betas(beta, alpha, stages)))]


def _spec_of(space: SearchSpace, result: Any) -> IndexSpec:
    """The IndexSpec of a search result, fitness result, IndexSpec or width vector."""
    best = getattr(result, "best", None)
    if best is not None and hasattr(best, "best_spec"):
        return best.best_spec
    if hasattr(result, "best_spec"):
        return result.best_spec
    if isinstance(result, Mapping):
        return {int(g): [int(i) for i in v] for g, v in result.items()}
    return space.fixed_spec([int(v) for v in result])


def _sensitivities(space: SearchSpace, fm: Any, widths: Mapping[int, int]) -> np.ndarray:
    """Marginal FLOPs per channel of every group at ``widths`` (one evaluate call)."""
    graph = space.graph
    w = graph.width_vector(widths)
    col = {gid: i for i, gid in enumerate(fm.searchable)}
    blocks = np.array([g.blocks for g in space.groups], dtype=np.float64)
    cols = [col[g.gid] for g in space.groups]
    W = np.tile(w, (len(cols) + 1, 1))
    for row, (c, b) in enumerate(zip(cols, blocks), start=1):
        W[row, c] -= b
    f = fm.evaluate(W)
    return (f[0] - f[1:]) / blocks


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def shrink_space(space: SearchSpace, result: Any, fm: Any, beta: Optional[float] = None,
                 alpha: float = 2.0) -> SearchSpace:
    """The search space restricted to a previous result, re-binned with a smaller β.

    Every group keeps exactly the channels the result kept (its winning IndexSpec, free
    pattern included), in the original importance order; the bin size is Eq. 9 with the new β
    and sensitivities at the result's widths, rounded up to the space's divisor. ``min_bins``
    keeps the original smallest width (or the whole group when fewer channels are left).

    Args:
        space: the previous stage's space (a shrunk one works too).
        result: a :class:`~cafeslim.search.SearchResult`, a
            :class:`~cafeslim.search.FitnessResult`, an IndexSpec, or a bin-count vector
            (fixed pattern).
        fm: the :class:`~cafeslim.flops.FlopsModel`.
        beta: β of the new space (default ``space.beta / alpha``).
        alpha: the bin evolving speed, used when ``beta`` is None.

    Returns:
        A :class:`SearchSpace` whose full width is the result and whose candidates only keep
        channels the result kept.

    Example:
        >>> sub = shrink_space(space, res, fm, alpha=2.0)                     # doctest: +SKIP
        >>> fm.flops(space.graph.widths_of(sub.fixed_spec(sub.num_bins))) == res.best.flops  # doctest: +SKIP
        True
    """
    beta = space.beta / alpha if beta is None else float(beta)
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    graph = space.graph
    spec = graph.validate_spec(_spec_of(space, result))
    kept: Dict[int, List[int]] = {}
    for gb in space.groups:
        stride = getattr(gb, "stride", 0) or gb.bounds[-1][1]
        allowed = set(gb.local_channels(range(gb.num_bins)))
        if gb.gid in spec:
            local = {i for i in spec[gb.gid] if i < stride}
            if not local <= allowed:
                raise ConfigError(f"the result keeps channels of group {gb.gid} outside the space")
        else:
            local = allowed
        order = gb.order or tuple(range(stride))
        kept[gb.gid] = [c for c in order if c in local]
    widths = {gb.gid: len(kept[gb.gid]) * gb.blocks for gb in space.groups}
    eps = _sensitivities(space, fm, widths)
    top = float(eps.max()) if len(eps) else 0.0
    mode = (space.meta or {}).get("mode", "flops")
    divisor = int(space.divisor or 1)
    groups: List[GroupBins] = []
    for gb, e in zip(space.groups, eps):
        order = tuple(kept[gb.gid])
        size = len(order)
        if mode == "uniform":
            n_bins = (space.meta or {}).get("num_bins")
            units = math.ceil(size / divisor)
            nb = units if n_bins is None else max(1, min(int(n_bins), units))
            cuts = [min(size, divisor * (units * i // nb)) for i in range(nb + 1)]
            bounds = tuple((a, b) for a, b in zip(cuts[:-1], cuts[1:]))
            b = bounds[0][1] - bounds[0][0]
        else:
            b = _round_half_up(beta * top / (e * gb.blocks)) if e > 0 and top > 0 else size
            b = min(size, max(1, b))
            b = min(math.ceil(b / divisor) * divisor, size) if divisor > 1 else b
            bounds = tuple((s, min(s + b, size)) for s in range(0, size, b))
        stride = getattr(gb, "stride", 0) or gb.bounds[-1][1]
        need = min(gb.width(gb.min_bins), size * gb.blocks)  # the original smallest width
        min_bins = next(i for i, (_, stop) in enumerate(bounds, start=1) if stop * gb.blocks >= need)
        groups.append(SubGroupBins(gid=gb.gid, channels=size, blocks=gb.blocks, sensitivity=float(e),
                                   bin_size=int(b), bounds=bounds, min_bins=min_bins, order=order,
                                   stride=stride))
    meta = {**(space.meta or {}), "max_sensitivity": top, "shrunk_from_beta": space.beta,
            "stage": int((space.meta or {}).get("stage", 1)) + 1}
    return SearchSpace(graph=graph, groups=groups, offset=space.offset, beta=beta,
                       divisor=divisor, meta=meta)


@dataclass
class StageResult:
    """One finished stage: its plan, the space it searched and what it found.

    Attributes:
        stage: the :class:`Stage` (index, budget, β).
        space: the search space of this stage.
        spec: the winning IndexSpec (the next stage shrinks to it).
        result: what ``search_fn`` returned (None for a stage restored from a record).
        record: the JSON-ready summary (see :meth:`to_json`).
    """

    stage: Stage
    space: SearchSpace
    spec: IndexSpec
    result: Any = None
    record: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """``{"stage", "budget", "beta", "spec", ...}`` plus whatever the record carried."""
        return {**self.record, "stage": self.stage.index, "budget": self.stage.budget,
                "beta": self.stage.beta, "spec": spec_to_json(self.spec)}


def run_stages(train_fn: Callable[[Stage, SearchSpace], Any],
               search_fn: Callable[[Stage, SearchSpace], Any],
               space: SearchSpace, fm: Any, target: float, *, stages: int = 1, alpha: float = 2.0,
               done: Optional[Sequence[Mapping[str, Any]]] = None,
               on_stage: Optional[Callable[[StageResult], None]] = None) -> List[StageResult]:
    """Algorithm 1 with Eq. 10: for each stage, train, search, then shrink the space.

    ``space`` is stage 1's (its β is the initial β). ``train_fn(stage, space)`` continues
    training the same supernet on ``space`` (set ``supernet.space``; BN statistics and fitness
    caches of the previous stage are stale once the weights move). ``search_fn(stage, space)``
    searches under ``stage.budget`` and returns a SearchResult (or FitnessResult / IndexSpec);
    stage ``t + 1`` searches the space shrunk to it with ``β / α``. The last stage's budget is
    ``target``.

    Args:
        train_fn, search_fn: see above.
        space: the first stage's search space.
        fm: the FLOPs model (``fm.full`` is ``FLOPs(0)``).
        target: F_b, the final FLOPs budget.
        stages: T (1 = ordinary single-stage search).
        alpha: the bin evolving speed α.
        done: records of finished stages (``StageResult.to_json``) from an interrupted run:
            their spaces are rebuilt from the recorded specs and they are not run again.
        on_stage: called with each newly finished stage (persist ``to_json()`` for resume).

    Returns:
        One :class:`StageResult` per stage; the last one holds the answer.

    Example:
        >>> out = run_stages(lambda st, sp: train(net, sp, epochs=E),      # doctest: +SKIP
        ...                  lambda st, sp: evolution_search(Fitness(net, sp, ...), sp, fm, st.budget),
        ...                  space, fm, target=0.5 * fm.full, stages=3, alpha=2.0)
        >>> out[-1].spec       # the exported IndexSpec                       # doctest: +SKIP
    """
    plan = plan_stages(fm.full, target, stages, space.beta, alpha)
    done = list(done or [])
    out: List[StageResult] = []
    current = space
    for stage in plan:
        if out:
            current = shrink_space(current, out[-1].spec, fm, beta=stage.beta)
        if len(out) < len(done):
            rec = dict(done[len(out)])
            if int(rec.get("stage", stage.index)) != stage.index or not math.isclose(
                    float(rec.get("budget", stage.budget)), stage.budget, rel_tol=1e-9):
                raise ConfigError(f"the saved stage {rec.get('stage')} does not match stage "
                                  f"{stage.index} of this plan (other --stages or budget?)")
            out.append(StageResult(stage, current, spec_from_json(rec["spec"]), None, rec))
            continue
        train_fn(stage, current)
        result = search_fn(stage, current)
        spec = _spec_of(current, result)
        record: Dict[str, Any] = {}
        best = getattr(result, "best", result)
        for name in ("top1", "flops"):
            if hasattr(best, name):
                record[name] = float(getattr(best, name))
        if hasattr(best, "k"):
            record["k"] = [int(v) for v in best.k]
        record["log10_space"] = current.log10_size
        sr = StageResult(stage, current, spec, result, record)
        out.append(sr)
        if on_stage is not None:
            on_stage(sr)
    return out


__all__ = ["Stage", "StageResult", "SubGroupBins", "plan_stages", "run_stages", "shrink_space",
           "stage_betas", "stage_budgets"]
