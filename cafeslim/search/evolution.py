"""Evolutionary search (CafeNet-E) of width vectors under a FLOPs window (Eq. 2 and 13).

Follows the paper's setting (A.2; the SPOS-style search it builds on): population 40, 50
generations, the top-10 scored so far are the parents, half the children by mutation (each
gene redrawn with probability 0.1) and half by uniform crossover, all at the bin level;
children already scored are not scored again.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ..bins.budget import DEFAULT_LOW
from ..errors import ConfigError
from .base import OnEval, OnState, RngLike, SearchResult, Searcher
from .fitness import CachedFitness, Key, as_key
from .operators import crossover, mutate


class EvolutionSearcher(Searcher):
    """Evolutionary search (see the module docstring for the scheme).

    Args:
        population: individuals per generation.
        iterations: generations (the initial random population is the first).
        parents: the top-k scored so far that breed the next generation.
        mutation_prob: probability to redraw each gene of a mutated child.
        crossover_share: fraction of each generation made by crossover (the rest by mutation).
        **kwargs: see :class:`Searcher`.

    Example:
        >>> s = EvolutionSearcher(fit, space, fm, budget, population=40, iterations=50, rng=0)  # doctest: +SKIP
        >>> while s.step():                          # doctest: +SKIP
        ...     save_json(s.get_state())          # resume with EvolutionSearcher(..., state=...)
    """

    kind = "evolution"

    def __init__(self, fitness: CachedFitness, space: Any, fm: Any, budget: float, *,
                 population: int = 40, iterations: int = 50, parents: int = 10,
                 mutation_prob: float = 0.1, crossover_share: float = 0.5, **kwargs: Any) -> None:
        if population < 2 or iterations < 1 or parents < 1:
            raise ConfigError("evolution needs population >= 2, iterations >= 1 and parents >= 1")
        if not 0 <= mutation_prob <= 1 or not 0 <= crossover_share <= 1:
            raise ConfigError("mutation_prob and crossover_share must be in [0, 1]")
        self.population_size, self.iterations = int(population), int(iterations)
        self.parents, self.mutation_prob = int(parents), float(mutation_prob)
        self.crossover_share = float(crossover_share)
        self.population: Optional[np.ndarray] = None
        self.topk: List[Key] = []
        super().__init__(fitness, space, fm, budget, **kwargs)

    @property
    def total(self) -> int:
        return self.population_size * self.iterations

    @classmethod
    def options(cls, cfg: Any) -> Dict[str, Any]:
        return {"population": cfg.population, "iterations": cfg.iterations,
                "parents": min(cfg.parents, cfg.population)}

    @classmethod
    def generations(cls, cfg: Any) -> int:
        return int(cfg.iterations)

    def settings(self) -> Dict[str, Any]:
        return {**super().settings(), "population": self.population_size,
                "iterations": self.iterations, "parents": self.parents,
                "mutation_prob": self.mutation_prob, "crossover_share": self.crossover_share}

    def step(self) -> bool:
        if self.finished:
            return False
        if self.population is None:
            self.population = self.window.sample(self.population_size, self.rng)
        results = self.score(self.population)
        # Parents: the best of the previous parents and this generation (elitist), first
        # seen first among equals, so the order is deterministic.
        pool: Dict[Key, float] = {k: self.fitness(k).top1 for k in self.topk}
        for r in results:
            pool.setdefault(r.k, r.top1)
        ranked = sorted(pool, key=lambda k: -pool[k])
        self.topk = ranked[: self.parents]
        self.generation += 1
        if self.generation >= self.iterations:
            self.finished, self.population = True, None
            return False
        self.population = self._children()
        return True

    def _children(self) -> np.ndarray:
        P = self.population_size
        n_cross = int(round(P * self.crossover_share)) if len(self.topk) > 1 else 0
        n_mut = P - n_cross
        parents = np.asarray(self.topk, dtype=np.int64)
        seen = set(self.scored)
        rng, space, prob = self.rng, self.space, self.mutation_prob
        kids = []
        if n_cross:
            kids.append(self.window.breed(lambda m: crossover(parents, m, rng), n_cross, rng, seen,
                                          resample=False))
            n_mut = P - len(kids[0])  # converged parents cross into nothing new: mutate more
        kids.append(self.window.breed(lambda m: mutate(parents, m, prob, space, rng), n_mut, rng, seen))
        return np.vstack(kids)

    def _extra_state(self) -> Dict[str, Any]:
        return {"population": None if self.population is None else self.population.tolist(),
                "topk": [list(k) for k in self.topk]}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        pop = state.get("population")
        self.population = None if pop is None else np.asarray(pop, dtype=np.int64).reshape(-1, len(self.space.groups))
        self.topk = [as_key(k) for k in state.get("topk", [])]


def evolution_search(fitness: CachedFitness, space: Any, fm: Any, budget: float, *,
                     population: int = 40, iterations: int = 50, parents: int = 10,
                     mutation_prob: float = 0.1, crossover_share: float = 0.5,
                     low: float = DEFAULT_LOW, rng: RngLike = None, on_eval: OnEval = None,
                     state: Optional[Mapping[str, Any]] = None, on_state: OnState = None,
                     tag: Optional[Mapping[str, Any]] = None) -> SearchResult:
    """Evolutionary max-max search (CafeNet-E) of the best width vector under ``budget``.

    Args:
        fitness: scores width vectors (:class:`~cafeslim.search.Fitness`).
        space, fm, budget, low: the search space, FLOPs model, budget and window.
        population, iterations, parents, mutation_prob, crossover_share: see
            :class:`EvolutionSearcher`.
        rng: seed or numpy Generator.
        on_eval: receives every newly scored record (``search.jsonl``).
        state: resume from this :meth:`Searcher.get_state`.
        on_state: receives the state after every generation (write it atomically).
        tag: extra fields for every record.

    Returns:
        A :class:`SearchResult`.

    Example:
        >>> res = evolution_search(fit, space, fm, parse_budget("50%", fm.full), rng=0,  # doctest: +SKIP
        ...                        on_eval=lambda r: log.write(json.dumps(r) + "\\n"))
        >>> res.best.flops <= res.budget                                    # doctest: +SKIP
        True
    """
    return EvolutionSearcher(fitness, space, fm, budget, population=population,
                             iterations=iterations, parents=parents, mutation_prob=mutation_prob,
                             crossover_share=crossover_share, low=low, rng=rng, on_eval=on_eval,
                             state=state, tag=tag).run(on_state)


__all__ = ["EvolutionSearcher", "evolution_search"]
