"""Fitness of a width vector: max-max selection over its locally free candidates (Eq. 13).

A width vector ``k`` (bins kept per searchable group) stands for several sub-networks ``S_c``:
the aligned candidates of :meth:`SearchSpace.candidates` that keep ``k``'s channel widths
(candidate 0 is the fixed pattern; ``r = 0`` leaves only it). Its fitness is the best D_val
top-1 among them, each measured after recalibrating BatchNorm on training batches; the
winner's IndexSpec is what gets exported.

:class:`~.supernet_fitness.Fitness` does this on a :class:`~cafeslim.supernet.Supernet`;
:class:`FunctionFitness` scores widths with a plain function (baselines, tests). Both share :class:`CachedFitness`:
results are cached by ``tuple(k)`` and can be written to and read from JSON records (one line
of ``search.jsonl`` each) — a record stores the winning candidate's index, not its IndexSpec,
which :meth:`CachedFitness.candidate_specs` rebuilds exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..graph import IndexSpec

Key = Tuple[int, ...]
Batches = Union[Callable[[], Iterable[Any]], Iterable[Any]]


def as_key(k: Sequence[int]) -> Key:
    """The cache key of a width vector: a tuple of python ints.

    Example:
        >>> as_key(np.array([3, 1, 2]))
        (3, 1, 2)
    """
    return tuple(int(v) for v in k)


@dataclass
class FitnessResult:
    """The max-max fitness of one width vector.

    Attributes:
        k: bins kept per searchable group.
        top1: best D_val score over the candidates, a fraction in [0, 1]: the task's metric
            (top-1; mIoU or mean label accuracy for the other tasks; the name is the record's
            since before tasks, kept so that old ``search.jsonl`` files resume).
        best_spec: IndexSpec of the winning candidate (what is exported).
        candidate_top1s: top-1 of every candidate, in candidate order.
        flops: FLOPs of the winning candidate (the fixed pattern's: every candidate keeps
            ``k``'s widths, see :meth:`CachedFitness.candidate_specs`).
        candidate: index of the winner among the candidates (ties go to the lowest index).
        recal_s, eval_s: seconds spent on BN recalibration and on evaluation for this vector.
    """

    k: Key
    top1: float
    best_spec: IndexSpec
    candidate_top1s: Tuple[float, ...]
    flops: float
    candidate: int = 0
    recal_s: float = 0.0
    eval_s: float = 0.0

    @property
    def flops_of_best_spec(self) -> float:
        return self.flops

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready record (no IndexSpec; see :meth:`CachedFitness.load_cache`).

        Example:
            >>> FitnessResult((2,), 0.5, {0: [0, 1]}, (0.5,), 1e6).to_json()["top1"]
            0.5
        """
        # NaN (no FLOPs model) is not JSON: written as null.
        flops = None if math.isnan(self.flops) else float(self.flops)
        return {"k": list(self.k), "top1": float(self.top1), "flops": flops,
                "candidate": int(self.candidate),
                "candidate_top1s": [float(t) for t in self.candidate_top1s],
                "recal_s": round(float(self.recal_s), 6), "eval_s": round(float(self.eval_s), 6)}


@dataclass
class FitnessStats:
    """Where the fitness time went (for the throughput report).

    Attributes:
        widths: width vectors evaluated (cache misses).
        hits: cache hits.
        candidates: candidate sub-networks evaluated.
        prepare_s: building gather plans for new specs.
        recal_s: BN recalibration forwards.
        eval_s: D_val forwards and top-1.
        recal_images, eval_images: images forwarded by each.
    """

    widths: int = 0
    hits: int = 0
    candidates: int = 0
    prepare_s: float = 0.0
    recal_s: float = 0.0
    eval_s: float = 0.0
    recal_images: int = 0
    eval_images: int = 0

    @property
    def seconds(self) -> float:
        return self.prepare_s + self.recal_s + self.eval_s

    def summary(self) -> Dict[str, float]:
        """Widths per second and the share of time in each part.

        Example:
            >>> FitnessStats(widths=4, recal_s=1.0, eval_s=1.0).summary()["widths_per_s"]
            2.0
        """
        s = self.seconds
        share = (lambda v: v / s if s > 0 else 0.0)
        return {"widths": self.widths, "hits": self.hits, "candidates": self.candidates,
                "seconds": s, "widths_per_s": self.widths / s if s > 0 else 0.0,
                "candidates_per_s": self.candidates / s if s > 0 else 0.0,
                "prepare_share": share(self.prepare_s), "recal_share": share(self.recal_s),
                "eval_share": share(self.eval_s)}


class CachedFitness:
    """Base class: caching by ``tuple(k)``, candidate specs, JSON records.

    Subclasses implement :meth:`_evaluate`. Calling the object returns the cached result when
    there is one.

    Args:
        space: the :class:`~cafeslim.bins.SearchSpace` the widths belong to.
        offset: r of Eq. 5 for the candidates (default: the space's).
        extra_candidates: candidates mixing free choices per group at random, on top of the
            aligned ones; drawn from a generator seeded by ``k``, so they are reproducible.
        flops_model: prices the winning spec (``nan`` when None).
    """

    def __init__(self, space: Any, offset: Optional[int] = None, extra_candidates: int = 0,
                 flops_model: Any = None) -> None:
        self.space = space
        self.offset = int(space.offset if offset is None else offset)
        self.extra_candidates = int(extra_candidates)
        self.flops_model = flops_model
        self.cache: Dict[Key, FitnessResult] = {}
        self.stats = FitnessStats()

    def __call__(self, k: Sequence[int]) -> FitnessResult:
        key = as_key(k)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.hits += 1
            return hit
        result = self._evaluate(key)
        self.cache[key] = result
        self.stats.widths += 1
        return result

    def _evaluate(self, k: Key) -> FitnessResult:
        raise NotImplementedError

    def cached(self, k: Sequence[int]) -> Optional[FitnessResult]:
        """The cached result of ``k``, or None (never evaluates)."""
        return self.cache.get(as_key(k))

    def candidate_specs(self, k: Sequence[int]) -> List[IndexSpec]:
        """The distinct candidates ``S_c`` of ``k``; candidate 0 is the fixed pattern.

        The aligned candidates of :meth:`SearchSpace.candidates` (choice ``i`` in every group,
        clipped), except that in each group only the free choices that keep exactly as many
        channels as the fixed pattern count: a group's last bin may be smaller than the others,
        and a choice that swaps it in would be a narrower network, cheaper than ``k``'s FLOPs
        and possibly below the window. Every candidate thus has ``k``'s widths and FLOPs —
        the paper's ``S_c``, the sub-networks *of width c*.

        Example:
            >>> len(fitness.candidate_specs(space.num_bins // 2))           # doctest: +SKIP
            3
        """
        from ..supernet.supernet import spec_key

        key = as_key(k)
        choices = []
        for g, ch in zip(self.space.groups, self.space.choices(key, self.offset)):
            size = lambda c: sum(g.bounds[b][1] - g.bounds[b][0] for b in c)  # noqa: E731
            choices.append(tuple(c for c in ch if size(c) == size(ch[0])))  # ch[0]: the fixed one
        n = max((len(c) for c in choices), default=1)
        specs = [self.space.spec([c[min(i, len(c) - 1)] for c in choices]) for i in range(n)]
        if self.extra_candidates:
            # Seeded by k: the same width always has the same candidates (cache records hold
            # only the winner's index).
            rng = np.random.default_rng([7, *key])
            specs += [self.space.spec([c[int(rng.integers(len(c)))] for c in choices])
                      for _ in range(self.extra_candidates)]
        seen, out = set(), []
        for s in specs:
            sk = spec_key(self.space.graph, s)
            if sk not in seen:
                seen.add(sk)
                out.append(s)
        return out

    def spec_flops(self, spec: Mapping[int, Sequence[int]]) -> float:
        """FLOPs of an IndexSpec by the FLOPs model (``nan`` without one)."""
        if self.flops_model is None:
            return math.nan
        graph = self.space.graph
        w = graph.width_vector(graph.widths_of(spec))
        return float(self.flops_model.evaluate(w[None])[0])

    def cache_state(self) -> List[Dict[str, Any]]:
        """Every cached result as a JSON record (:meth:`FitnessResult.to_json`)."""
        return [r.to_json() for r in self.cache.values()]

    def load_cache(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Fill the cache from JSON records (``search.jsonl`` lines or :meth:`cache_state`).

        Records need ``k``, ``top1``, ``candidate``; the IndexSpec is rebuilt from the
        candidate index. Keys already cached are left alone; records of a width with fewer
        candidates than the recorded index (another offset) are skipped.

        Returns:
            How many results were added.

        Example:
            >>> fitness.load_cache(json.loads(line) for line in open("search.jsonl"))  # doctest: +SKIP
            412
        """
        added = 0
        for rec in records:
            key = as_key(rec["k"])
            if key in self.cache or len(key) != len(self.space.groups):
                continue
            specs = self.candidate_specs(key)
            c = int(rec.get("candidate", 0))
            if not 0 <= c < len(specs):
                continue
            flops = rec.get("flops")
            self.cache[key] = FitnessResult(
                key, float(rec["top1"]), specs[c], tuple(float(t) for t in rec.get("candidate_top1s", ())),
                float(flops) if flops is not None else self.spec_flops(specs[c]), c,
                float(rec.get("recal_s", 0.0)), float(rec.get("eval_s", 0.0)))
            added += 1
        return added

    def clear(self) -> None:
        """Forget every cached result (after the supernet's weights change, e.g. a new stage)."""
        self.cache.clear()


class FunctionFitness(CachedFitness):
    """Fitness from a plain function of the width vector, with the fixed pattern as the spec.

    Example:
        >>> fit = FunctionFitness(lambda k: float(np.sum(k)), space)          # doctest: +SKIP
        >>> fit(space.num_bins).top1                                          # doctest: +SKIP
    """

    def __init__(self, fn: Callable[[np.ndarray], float], space: Any, flops_model: Any = None) -> None:
        super().__init__(space, offset=0, flops_model=flops_model)
        self.fn = fn

    def _evaluate(self, k: Key) -> FitnessResult:
        t0 = time.perf_counter()
        top1 = float(self.fn(np.asarray(k, dtype=np.int64)))
        spec = self.space.fixed_spec(k)
        self.stats.candidates += 1
        dt = time.perf_counter() - t0
        self.stats.eval_s += dt
        return FitnessResult(k, top1, spec, (top1,), self.spec_flops(spec), 0, 0.0, dt)


__all__ = ["CachedFitness", "FitnessResult", "FitnessStats", "FunctionFitness", "as_key"]
