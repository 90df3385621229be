"""Max-max width search (Eq. 13) and multi-stage search (Eq. 10).

Example:
    >>> from cafeslim.search import Fitness, evolution_search
    >>> fit = Fitness(supernet, space, data.calib, data.val, recal_n=20, flops_model=fm)  # doctest: +SKIP
    >>> res = evolution_search(fit, space, fm, budget, rng=0)                            # doctest: +SKIP
    >>> res.best.best_spec        # the IndexSpec to export                              # doctest: +SKIP
"""

from .fitness import CachedFitness, Fitness, FitnessResult, FitnessStats, FunctionFitness, as_key
from .multistage import (Stage, StageResult, SubGroupBins, plan_stages, run_stages, shrink_space,
                         stage_betas, stage_budgets)
from .operators import Window, crossover, mutate
from .searchers import (SEARCHERS, EvolutionSearcher, RandomSearcher, SearchResult, Searcher,
                        evolution_search, random_search, search_budgets)

__all__ = [
    "CachedFitness", "EvolutionSearcher", "Fitness", "FitnessResult", "FitnessStats",
    "FunctionFitness", "RandomSearcher", "SEARCHERS", "SearchResult", "Searcher", "Stage",
    "StageResult", "SubGroupBins", "Window", "as_key", "crossover", "evolution_search", "mutate",
    "plan_stages", "random_search", "run_stages", "search_budgets", "shrink_space", "stage_betas",
    "stage_budgets",
]
