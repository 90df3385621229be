"""Evolutionary and random search of width vectors under a FLOPs window (Eq. 2 and 13).

Both searchers score bin-count vectors with a fitness (:mod:`.fitness`), keep every individual
inside ``[low · B, B]`` by the FLOPs model (:mod:`.operators`), report every newly scored vector
to ``on_eval`` (the CLI appends it to ``search.jsonl``) and can stop and resume: after every
finished generation ``get_state()`` is a JSON-ready dict (generation, population, parents, the
numpy generator's state and the history, whose records *are* the fitness cache), and a searcher
built with ``state=`` continues exactly where that state left off — same children, same result
as an uninterrupted run with the same seed.

Evolution follows the paper's setting (A.2; the SPOS-style search it builds on): population
40, 50 generations, the top-10 scored so far are the parents, half the children by mutation
(each gene redrawn with probability 0.1) and half by uniform crossover, all at the bin level;
children already scored are not scored again. Random search scores 2,000 vectors drawn
uniformly from the window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Union

import numpy as np

from ..bins.budget import DEFAULT_LOW
from ..errors import ConfigError
from ..graph import spec_to_json
from .fitness import CachedFitness, FitnessResult, Key, as_key
from .operators import Window, crossover, mutate

STATE_FORMAT = "cafeslim-search"
STATE_VERSION = 1
RngLike = Union[None, int, np.random.Generator]
OnEval = Optional[Callable[[Dict[str, Any]], None]]
OnState = Optional[Callable[[Dict[str, Any]], None]]


@dataclass
class SearchResult:
    """What one search found.

    Attributes:
        budget: the FLOPs budget ``B`` (the window is ``[low · B, B]``).
        best_k: the best width vector (bin counts).
        best: its :class:`FitnessResult` (top-1, the winning IndexSpec, FLOPs).
        history: every record sent to ``on_eval``, in order.
        searcher: ``evolution`` or ``random``.
        seconds: wall time of this invocation (not counting time before a resume).
        state: the final :meth:`Searcher.get_state`.
    """

    budget: float
    best_k: Key
    best: FitnessResult
    history: List[Dict[str, Any]]
    searcher: str
    seconds: float = 0.0
    state: Dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> int:
        return len(self.history)

    def to_json(self, space: Any = None) -> Dict[str, Any]:
        """The ``result.json`` entry of this budget (widths per group, IndexSpec, FLOPs, top-1).

        Example:
            >>> json.dumps(result.to_json(space))                          # doctest: +SKIP
        """
        spec = self.best.best_spec
        out: Dict[str, Any] = {"budget": self.budget, "searcher": self.searcher,
                               "k": list(self.best_k), "top1": self.best.top1,
                               "flops": self.best.flops, "candidate": self.best.candidate,
                               "evaluated": self.evaluated, "spec": spec_to_json(spec)}
        if space is not None:
            out["widths"] = {str(g): int(w) for g, w in space.graph.widths_of(spec).items()}
        return out


class Searcher:
    """Shared machinery: scoring, records, best-so-far, state. See the subclasses.

    Args:
        fitness: a :class:`CachedFitness` (shared between searches to share its cache).
        space: the :class:`~cafeslim.bins.SearchSpace`.
        fm: the :class:`~cafeslim.flops.FlopsModel` that defines the window.
        budget: FLOPs upper bound.
        low: window's lower end as a fraction of ``budget``.
        rng: a seed or a numpy Generator (consumed; its state is part of the search state).
        on_eval: called with a record for every vector newly scored by this search.
        state: a :meth:`get_state` dict to resume from.
        tag: extra fields for every record (e.g. the stage).
    """

    kind = "base"

    def __init__(self, fitness: CachedFitness, space: Any, fm: Any, budget: float, *,
                 low: float = DEFAULT_LOW, rng: RngLike = None, on_eval: OnEval = None,
                 state: Optional[Mapping[str, Any]] = None,
                 tag: Optional[Mapping[str, Any]] = None) -> None:
        self.fitness, self.space, self.fm = fitness, space, fm
        self.window = Window(space, fm, budget, low)
        self.budget, self.low = float(budget), float(low)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.on_eval, self.tag = on_eval, dict(tag or {})
        self.history: List[Dict[str, Any]] = []
        self.scored: Set[Key] = set()
        self.generation = 0
        self.finished = False
        self._best: Optional[Dict[str, Any]] = None
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ to override

    @property
    def total(self) -> int:
        """Records a complete search produces (at most; for progress bars)."""
        raise NotImplementedError

    def settings(self) -> Dict[str, Any]:
        """What a state must match to be resumed by this searcher."""
        return {"budget": self.budget, "low": self.low}

    @classmethod
    def options(cls, cfg: Any) -> Dict[str, Any]:
        """This searcher's keyword arguments from a :class:`~cafeslim.config.SearchConfig`."""
        return {}

    @classmethod
    def generations(cls, cfg: Any) -> int:
        """Generations a search with ``cfg`` runs (for progress bars)."""
        raise NotImplementedError

    def step(self) -> bool:
        """Score one generation; False once the search is finished."""
        raise NotImplementedError

    def _extra_state(self) -> Dict[str, Any]:
        return {}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ shared

    def score(self, K: np.ndarray) -> List[FitnessResult]:
        """Fitness of every row; a record goes to ``on_eval`` the first time a key is seen."""
        out = []
        for k in np.atleast_2d(K):
            key = as_key(k)
            was_cached = self.fitness.cached(key) is not None
            res = self.fitness(key)
            out.append(res)
            if key in self.scored:
                continue
            self.scored.add(key)
            rec = {"index": len(self.history), "searcher": self.kind, "budget": self.budget,
                   "generation": self.generation, **res.to_json(), "cached": was_cached, **self.tag}
            self.history.append(rec)
            if self._best is None or rec["top1"] > self._best["top1"]:
                self._best = rec
            if self.on_eval is not None:
                self.on_eval(rec)
        return out

    @property
    def best(self) -> Optional[FitnessResult]:
        """The best result so far (first of equals), or None before anything was scored."""
        return None if self._best is None else self.fitness(self._best["k"])

    def run(self, on_state: OnState = None) -> SearchResult:
        """Run (or finish) the search; ``on_state(get_state())`` after every generation.

        Example:
            >>> res = EvolutionSearcher(fit, space, fm, 0.5 * fm.full, rng=0).run()  # doctest: +SKIP
        """
        t0 = time.perf_counter()
        while not self.finished:
            self.step()
            if on_state is not None:
                on_state(self.get_state())
        best = self.best
        if best is None:
            raise ConfigError("the search scored no width vector")
        return SearchResult(self.budget, best.k, best, list(self.history), self.kind,
                            time.perf_counter() - t0, self.get_state())

    def get_state(self) -> Dict[str, Any]:
        """A JSON-ready snapshot taken between generations (see the module docstring)."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "searcher": self.kind,
                "settings": self.settings(), "generation": self.generation,
                "finished": self.finished, "rng": self.rng.bit_generator.state,
                "history": list(self.history), **self._extra_state()}

    def _restore(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or state.get("searcher") != self.kind:
            raise ConfigError(f"not a {self.kind} search state (format {state.get('format')!r}, "
                              f"searcher {state.get('searcher')!r})")
        want, got = self.settings(), dict(state.get("settings") or {})
        diff = {k: (got.get(k), v) for k, v in want.items() if not _same(got.get(k), v)}
        if diff:
            text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(f"the saved search was made with other settings ({text}); resume "
                              "with the run's own settings")
        self.generation = int(state["generation"])
        self.finished = bool(state.get("finished", False))
        self.rng.bit_generator.state = state["rng"]
        self.history = [dict(r) for r in state.get("history", [])]
        # The records hold every scored result: they refill the fitness cache, so nothing
        # scored before the interruption is scored again.
        self.fitness.load_cache(self.history)
        self.scored = {as_key(r["k"]) for r in self.history}
        for rec in self.history:
            if self._best is None or rec["top1"] > self._best["top1"]:
                self._best = rec
        self._load_extra(state)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


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


class RandomSearcher(Searcher):
    """Random search: ``n`` vectors uniform in the window, scored ``chunk`` per generation.

    The vectors are drawn once, at the first step, and kept in the state, so a resumed search
    scores exactly the remaining ones. Repeats cost nothing (fitness cache) and make no record.

    Example:
        >>> res = RandomSearcher(fit, space, fm, budget, n=2000, rng=0).run()   # doctest: +SKIP
    """

    kind = "random"
    CHUNK = 40  # vectors scored per generation

    def __init__(self, fitness: CachedFitness, space: Any, fm: Any, budget: float, *,
                 n: int = 2000, chunk: int = CHUNK, **kwargs: Any) -> None:
        if n < 1 or chunk < 1:
            raise ConfigError("random search needs n >= 1 and chunk >= 1")
        self.n, self.chunk = int(n), int(chunk)
        self.samples: Optional[np.ndarray] = None
        self.done = 0
        super().__init__(fitness, space, fm, budget, **kwargs)

    @property
    def total(self) -> int:
        return self.n

    @classmethod
    def options(cls, cfg: Any) -> Dict[str, Any]:
        return {"n": cfg.samples}

    @classmethod
    def generations(cls, cfg: Any) -> int:
        return -(-int(cfg.samples) // cls.CHUNK)

    def settings(self) -> Dict[str, Any]:
        return {**super().settings(), "n": self.n, "chunk": self.chunk}

    def step(self) -> bool:
        if self.finished:
            return False
        if self.samples is None:
            self.samples = self.window.sample(self.n, self.rng)
        hi = min(self.n, self.done + self.chunk)
        self.score(self.samples[self.done:hi])
        self.done = hi
        self.generation += 1
        self.finished = self.done >= self.n
        return not self.finished

    def _extra_state(self) -> Dict[str, Any]:
        return {"samples": None if self.samples is None else self.samples.tolist(), "done": self.done}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        s = state.get("samples")
        self.samples = None if s is None else np.asarray(s, dtype=np.int64).reshape(-1, len(self.space.groups))
        self.done = int(state.get("done", 0))


SEARCHERS = {"evolution": EvolutionSearcher, "random": RandomSearcher}


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


def random_search(fitness: CachedFitness, space: Any, fm: Any, budget: float, n: int = 2000, *,
                  chunk: int = 40, low: float = DEFAULT_LOW, rng: RngLike = None,
                  on_eval: OnEval = None, state: Optional[Mapping[str, Any]] = None,
                  on_state: OnState = None, tag: Optional[Mapping[str, Any]] = None) -> SearchResult:
    """Random max-max search (CafeNet-R): the best of ``n`` vectors uniform in the window.

    Arguments as for :func:`evolution_search`; ``chunk`` vectors make one generation.

    Example:
        >>> res = random_search(fit, space, fm, budget, n=2000, rng=0)        # doctest: +SKIP
        >>> res.best.top1 == max(r["top1"] for r in res.history)              # doctest: +SKIP
        True
    """
    return RandomSearcher(fitness, space, fm, budget, n=n, chunk=chunk, low=low, rng=rng,
                          on_eval=on_eval, state=state, tag=tag).run(on_state)


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
