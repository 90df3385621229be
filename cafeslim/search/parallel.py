"""The max-max search over several processes: each rank scores its share of a generation.

Under ``torchrun --nproc_per_node N`` every rank runs the same search (same seed, same
generator, same cache), so every rank knows the same generation of width vectors. Scoring one
(BatchNorm recalibration, then D_val top-1 for each of its candidates) needs nothing from the
others, so :func:`share_scores` lets each rank score its share of the generation's uncached
vectors on its own (:func:`~cafeslim.supernet.distributed.local_only`: no collective, and the
calibration batches a single process would read, see :func:`cafeslim.data.loaders.unsharded`),
then all-gathers the results into every rank's cache. The search then continues on every rank from identical caches: the same parents, the
same children, the same result as one process — in about 1/N of the scoring time.

The shares balance the work: a vector costs one recalibration and D_val pass per candidate,
and vectors have one to ``2r + 1`` candidates (:func:`_shares`).

Example:
    >>> share_scores(fitness, [(3, 2, 4), (5, 1, 2)])     # no-op in a single process
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, List, Sequence

from ..supernet import distributed
from .fitness import CachedFitness, FitnessStats, Key, as_key


def _stats_delta(after: FitnessStats, before: Dict[str, Any]) -> Dict[str, Any]:
    return {f.name: getattr(after, f.name) - before[f.name] for f in fields(FitnessStats)}


def _shares(fitness: CachedFitness, keys: List[Key], world: int) -> List[List[Key]]:
    """Split ``keys`` into ``world`` shares of about equal work, the same on every rank.

    A vector's work is one recalibration and one D_val pass per candidate, and the window
    keeps every vector's FLOPs within a few percent, so the candidate count is the cost;
    greedy longest-first onto the least loaded rank (ties: the lower rank, the earlier key).
    """
    cost = {k: len(fitness.candidate_specs(k)) for k in keys}
    load, shares = [0] * world, [[] for _ in range(world)]  # type: List[List[Key]]
    for k in sorted(keys, key=lambda k: -cost[k]):  # stable: equal costs keep their order
        r = min(range(world), key=lambda i: (load[i], i))
        shares[r].append(k)
        load[r] += cost[k]
    return shares


def share_scores(fitness: CachedFitness, keys: Sequence[Sequence[int]]) -> int:
    """Score ``keys`` across the ranks and put every result in every rank's cache.

    Keys already cached are skipped; a single process (or one rank) does nothing here and
    leaves the scoring to the caller. Every rank must call this with the same keys.

    Returns:
        How many results were computed (by all ranks together).

    Example:
        >>> share_scores(fitness, population)                       # doctest: +SKIP
        12
    """
    world = distributed.collective_world()
    if world < 2:
        return 0
    todo: List[Key] = [k for k in dict.fromkeys(as_key(k) for k in keys)
                       if fitness.cached(k) is None]
    if not todo:
        return 0
    rank = distributed.current().rank
    before = {f.name: getattr(fitness.stats, f.name) for f in fields(FitnessStats)}
    with distributed.local_only():
        mine = [fitness(k).to_json() for k in _shares(fitness, todo, world)[rank]]
    delta = _stats_delta(fitness.stats, before)
    gathered = distributed.all_gather_object((mine, delta))
    records = {as_key(r["k"]): r for part, _ in gathered for r in part}
    for k in todo:  # every rank installs the same results, rebuilt the same way
        fitness.cache.pop(k, None)
    fitness.load_cache(records[k] for k in todo)
    for r, (_, d) in enumerate(gathered):
        if r == rank:
            continue
        for name, value in d.items():  # the time the other ranks spent is the search's too
            setattr(fitness.stats, name, getattr(fitness.stats, name) + value)
    # The caller now reads each of these from the cache: count it once, as the miss it was.
    fitness.stats.hits -= len(todo)
    return len(todo)


__all__ = ["share_scores"]
