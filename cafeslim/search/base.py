"""The searchers' shared machinery: scoring, records, best-so-far, resumable state.

A searcher scores bin-count vectors with a fitness (:mod:`.fitness`), keeps every individual
inside ``[low · B, B]`` by the FLOPs model (:mod:`.operators`), reports every newly scored
vector to ``on_eval`` (the CLI appends it to ``search.jsonl``) and can stop and resume: after
every finished generation ``get_state()`` is a JSON-ready dict (generation, the numpy
generator's state and the history, whose records *are* the fitness cache, plus the
subclass's own), and a searcher built with ``state=`` continues exactly where that state left
off — same children, same result as an uninterrupted run with the same seed.

A new searcher subclasses :class:`Searcher` (``kind``, ``step``, ``total``, ``options``,
``generations``, and its state) and is added to :data:`cafeslim.search.SEARCHERS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Union

import numpy as np

from ..bins.budget import DEFAULT_LOW
from ..errors import ConfigError
from ..graph import spec_to_json
from .fitness import CachedFitness, FitnessResult, Key, as_key
from .operators import Window

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
        """Fitness of every row; a record goes to ``on_eval`` the first time a key is seen.

        Under ``torchrun`` the rows are scored in parallel, each rank its share, and the
        results gathered on every rank (:func:`~cafeslim.search.parallel.share_scores`): the
        records, the cache and the search's course are the same on every rank and the same as
        in one process.
        """
        from .parallel import share_scores

        keys = [as_key(k) for k in np.atleast_2d(K)]
        was = {key: self.fitness.cached(key) is not None for key in keys}
        share_scores(self.fitness, keys)
        out = []
        for key in keys:
            was_cached = was[key]
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


__all__ = ["OnEval", "OnState", "RngLike", "SearchResult", "Searcher"]
