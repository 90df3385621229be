"""The searchers by name, and searching several budgets on one supernet.

:data:`SEARCHERS` maps ``--searcher`` / ``SearchConfig.searcher`` to a
:class:`~.base.Searcher` subclass; :func:`search_with` runs the configured one (the command
line's pipeline and the Python API both call it). To add a searcher: subclass
:class:`~.base.Searcher` in its own module and add it here (and its name to the
``searcher`` ``Literal`` of :class:`~cafeslim.config.SearchConfig`, which is the CLI's choice).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type

import numpy as np

from ..errors import ConfigError
from .base import OnEval, SearchResult, Searcher
from .evolution import EvolutionSearcher, evolution_search
from .fitness import CachedFitness
from .random_sampling import RandomSearcher, random_search

SEARCHERS: Dict[str, Type[Searcher]] = {"evolution": EvolutionSearcher, "random": RandomSearcher}


def search_budgets(fitness: CachedFitness, space: Any, fm: Any, budgets: Sequence[float],
                   searcher: str = "evolution", *, seed: int = 0,
                   states: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
                   on_eval: OnEval = None,
                   on_state: Optional[Callable[[List[Optional[Dict[str, Any]]]], None]] = None,
                   **kwargs: Any) -> List[SearchResult]:
    """Search several budgets on one supernet, one after another, sharing the fitness cache.

    Budget ``i`` gets its own generator seeded by ``(seed, i)``, so each search is
    reproducible alone and resumable independently.

    Args:
        fitness: shared by all searches (a vector scored for one budget is free for the next).
        space, fm: the search space and FLOPs model.
        budgets: FLOPs budgets (e.g. from :func:`~cafeslim.bins.parse_budget`).
        searcher: ``evolution`` or ``random``.
        seed: base seed.
        states: per budget, a saved state to resume (None: start fresh); finished ones are
            not run again.
        on_eval: receives every record (with its ``budget``).
        on_state: receives the list of all budgets' states after every generation.
        **kwargs: passed to the searcher (``population``, ``iterations``, ``n``, ``low``, ...).

    Returns:
        One :class:`SearchResult` per budget, in the given order.

    Example:
        >>> results = search_budgets(fit, space, fm, [1e9, 2e9], "evolution", seed=0)  # doctest: +SKIP
        >>> [r.best.flops <= r.budget for r in results]                                 # doctest: +SKIP
        [True, True]
    """
    if searcher not in SEARCHERS:
        raise ConfigError(f"unknown searcher {searcher!r}; choose from {', '.join(SEARCHERS)}")
    cls = SEARCHERS[searcher]
    saved: List[Optional[Dict[str, Any]]] = [None] * len(budgets)
    for i, st in enumerate(states or []):
        if i < len(saved) and st is not None:
            saved[i] = dict(st)
            fitness.load_cache(st.get("history", []))
    results = []
    for i, budget in enumerate(budgets):
        s = cls(fitness, space, fm, float(budget), rng=np.random.default_rng([int(seed), i]),
                on_eval=on_eval, state=saved[i], **kwargs)

        def report(state: Dict[str, Any], i: int = i) -> None:
            saved[i] = state
            if on_state is not None:
                on_state(list(saved))

        results.append(s.run(report))
        saved[i] = results[-1].state
    return results


def search_with(config: Any, fitness: CachedFitness, space: Any, fm: Any,
                budgets: Sequence[float], *, seed: int = 0, **kwargs: Any) -> List[SearchResult]:
    """:func:`search_budgets` with the searcher and its options from a settings object.

    ``config`` is a :class:`~cafeslim.config.SearchConfig`: its ``searcher`` names an entry
    of :data:`SEARCHERS`, whose :meth:`Searcher.options` reads its own fields; ``low`` is the
    window. The command line and the Python API both search through here.

    Example:
        >>> search_with(SearchConfig(population=8, iterations=3), fit, space, fm, [1e9])  # doctest: +SKIP
    """
    if config.searcher not in SEARCHERS:
        raise ConfigError(f"unknown searcher {config.searcher!r}; choose from {', '.join(SEARCHERS)}")
    options = SEARCHERS[config.searcher].options(config)
    return search_budgets(fitness, space, fm, budgets, config.searcher, seed=seed, low=config.low,
                          **options, **kwargs)


__all__ = ["EvolutionSearcher", "RandomSearcher", "SEARCHERS", "SearchResult", "Searcher",
           "evolution_search", "random_search", "search_budgets", "search_with"]
