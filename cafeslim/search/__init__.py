"""Max-max width search (Eq. 13) and multi-stage search (Eq. 10).

Example:
    >>> from cafeslim.search import Fitness, evolution_search
    >>> fit = Fitness(supernet, space, data.calib, data.val, recal_n=20, flops_model=fm)  # doctest: +SKIP
    >>> res = evolution_search(fit, space, fm, budget, rng=0)                            # doctest: +SKIP
    >>> res.best.best_spec        # the IndexSpec to export                              # doctest: +SKIP
"""

import importlib

# Lazy: ``cafeslim search``'s argument errors should not wait for torch to import.
_EXPORTS = {
    "fitness": ["CachedFitness", "FitnessResult", "FitnessStats", "FunctionFitness", "as_key"],
    "supernet_fitness": ["Fitness"],
    "multistage": ["Stage", "StageResult", "SubGroupBins", "plan_stages", "run_stages", "shrink_space",
                   "stage_betas", "stage_budgets"],
    "operators": ["Window", "crossover", "mutate"],
    "searchers": ["SEARCHERS", "EvolutionSearcher", "RandomSearcher", "SearchResult", "Searcher",
                  "evolution_search", "random_search", "search_budgets", "search_with"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
