"""Random search (CafeNet-R): the best of ``n`` width vectors drawn uniformly from the window.

The paper's setting scores 2,000 vectors.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..bins.budget import DEFAULT_LOW
from ..errors import ConfigError
from .base import OnEval, OnState, RngLike, SearchResult, Searcher
from .fitness import CachedFitness


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


__all__ = ["RandomSearcher", "random_search"]
