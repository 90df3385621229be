"""Bin-level variation operators that keep every width vector inside the FLOPs window.

Every individual a searcher scores must satisfy ``low · B ≤ FLOPs(k) ≤ B`` by the
:class:`~cafeslim.flops.FlopsModel` (DESIGN.md, "Max-max search"). Children of mutation and
crossover usually land outside that thin shell, so :class:`Window` offers three increasingly
blunt ways to get valid ones, in the order a searcher uses them:

1. **rejection** — breed several times more children than needed (vectorised, one FLOPs call)
   and keep the valid ones not seen before;
2. **repair** — move a child one bin at a time toward the window (down while above ``B``, up
   while below ``low · B`` as long as the step does not overshoot), each step in a random
   group that can move, so that most of the child's genes survive;
3. **resampling** — fresh vectors from :func:`~cafeslim.bins.random_widths`.

Width vectors are bin counts (``k[g]`` of the ``K[g]`` bins of group ``g``); FLOPs are those of
the fixed pattern, which bound every locally free candidate of the same vector from above.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Set, Tuple

import numpy as np

from ..bins.budget import DEFAULT_LOW, random_widths, space_flops
from ..errors import BudgetError
from .fitness import Key, as_key

Breeder = Callable[[int], np.ndarray]


class Window:
    """The valid set ``{k : low · budget ≤ FLOPs(k) ≤ budget}`` of a search space.

    Args:
        space: the :class:`~cafeslim.bins.SearchSpace`.
        fm: its :class:`~cafeslim.flops.FlopsModel`.
        budget: the FLOPs upper bound ``B``.
        low: the lower end of the window as a fraction of ``B``.

    Example:
        >>> win = Window(space, fm, 0.5 * fm.full)                      # doctest: +SKIP
        >>> win.valid(win.sample(8, np.random.default_rng(0))).all()    # doctest: +SKIP
        True
    """

    def __init__(self, space, fm, budget: float, low: float = DEFAULT_LOW) -> None:
        if not 0 < low <= 1:
            raise BudgetError(f"the lower window must be in (0, 1], got {low}")
        self.space, self.fm = space, fm
        self.budget, self.low = float(budget), float(low)
        self.lo, self.hi = self.low * self.budget, self.budget
        self.mins = space.min_bins
        self.maxs = space.num_bins

    def flops(self, K: np.ndarray) -> np.ndarray:
        """FLOPs of bin-count vectors ``[N, S]`` (fixed pattern)."""
        K = np.atleast_2d(K)
        if not len(K):
            return np.zeros(0)
        return space_flops(self.space, self.fm, K)

    def valid(self, K: np.ndarray) -> np.ndarray:
        """``[N]`` bool: inside the box of bin counts and the FLOPs window."""
        K = np.atleast_2d(K)
        box = ((K >= self.mins) & (K <= self.maxs)).all(1)
        f = self.flops(np.clip(K, self.mins, self.maxs))
        return box & (f >= self.lo) & (f <= self.hi)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` vectors approximately uniform in the window (:func:`random_widths`)."""
        return random_widths(self.space, self.fm, self.budget, n, rng, low=self.low)

    def repair(self, K: np.ndarray, rng: np.random.Generator, steps: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Move each row toward the window one bin at a time; returns ``(K, valid)``.

        Rows above the budget lose a bin in a random group that still has one to lose (FLOPs
        only grow with widths, so this always makes progress); rows below ``low · B`` gain a
        bin in a random group whose extra bin keeps them under ``B`` (a step that would
        overshoot is refused and another group tried next round).

        Example:
            >>> K, ok = win.repair(children, rng)                          # doctest: +SKIP
        """
        K = np.clip(np.atleast_2d(np.asarray(K, dtype=np.int64)), self.mins, self.maxs).copy()
        f = self.flops(K)
        steps = int(steps if steps is not None else 2 * int((self.maxs - self.mins).sum()) + 16)
        for _ in range(steps):
            above, below = f > self.hi, f < self.lo
            rows = np.flatnonzero(above | below)
            if not len(rows):
                break
            d = np.where(above[rows], -1, 1)
            moved = K[rows] + d[:, None]
            can = (moved >= self.mins) & (moved <= self.maxs)
            has = can.any(1)
            score = np.where(can, rng.random(can.shape), -1.0)
            g = score.argmax(1)
            new = K[rows].copy()
            new[np.arange(len(rows)), g] += np.where(has, d, 0)
            fn = self.flops(new)
            accept = has & ((d < 0) | (fn <= self.hi))
            K[rows[accept]] = new[accept]
            f[rows[accept]] = fn[accept]
        return K, (f >= self.lo) & (f <= self.hi)

    def breed(self, make: Breeder, n: int, rng: np.random.Generator, seen: Set[Key],
              rounds: int = 8, oversample: int = 4, resample: bool = True) -> np.ndarray:
        """``n`` valid vectors not in ``seen``: rejection, then repair, then resampling.

        Args:
            make: ``make(m) -> [m, S]`` raw children (may be invalid).
            n: how many to return.
            rng: drives repair and resampling.
            seen: keys already scored or chosen; the returned keys are added to it.
            rounds, oversample: rejection rounds, each breeding ``oversample × missing``.
            resample: fill what rejection and repair could not with random window vectors;
                without it, fewer than ``n`` rows may come back (crossover of parents that
                have converged makes nothing new; the caller then mutates instead).

        Returns:
            ``[n, S]`` int64 (or fewer rows, see ``resample``). Only when the window holds too
            few unseen vectors may rows repeat one another or ``seen``.

        Example:
            >>> kids = win.breed(lambda m: mutate(top, m, 0.1, space, rng), 20, rng, seen)  # doctest: +SKIP
        """
        out: List[np.ndarray] = []

        def take(C: np.ndarray, ok: np.ndarray) -> None:
            for c in C[ok]:
                key = as_key(c)
                if len(out) < n and key not in seen:
                    seen.add(key)
                    out.append(c)

        for _ in range(rounds):
            missing = n - len(out)
            if missing <= 0:
                break
            C = np.atleast_2d(make(oversample * missing))
            take(C, self.valid(C))
        for _ in range(rounds):
            missing = n - len(out)
            if missing <= 0:
                break
            C, ok = self.repair(make(oversample * missing), rng)
            take(C, ok)
        missing = n - len(out)
        if missing > 0 and not resample:
            return np.asarray(out, dtype=np.int64).reshape(len(out), len(self.mins))
        if missing > 0:
            C = self.sample(4 * missing, rng)
            take(C, np.ones(len(C), dtype=bool))
            if len(out) < n:   # a tiny window: accept repeats rather than fail
                out.extend(C[: n - len(out)])
        return np.asarray(out, dtype=np.int64).reshape(n, len(self.mins))


def mutate(parents: np.ndarray, n: int, prob: float, space, rng: np.random.Generator) -> np.ndarray:
    """``n`` children of random parents; each gene is redrawn uniformly with probability ``prob``
    (at least one gene per child).

    Example:
        >>> mutate(np.array([[4, 4]]), 2, 1.0, space, rng).shape           # doctest: +SKIP
        (2, 2)
    """
    parents = np.atleast_2d(parents)
    base = parents[rng.integers(len(parents), size=n)]
    fresh = rng.integers(space.min_bins, space.num_bins + 1, size=base.shape)
    hit = rng.random(base.shape) < prob
    # A child with no gene drawn would be its parent again, already scored: draw one gene.
    none = ~hit.any(1)
    hit[np.flatnonzero(none), rng.integers(base.shape[1], size=int(none.sum()))] = True
    return np.where(hit, fresh, base)


def crossover(parents: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform crossovers: each gene from one of two distinct random parents.

    Example:
        >>> crossover(np.array([[1, 1], [3, 3]]), 4, rng).shape            # doctest: +SKIP
        (4, 2)
    """
    parents = np.atleast_2d(parents)
    a = rng.integers(len(parents), size=n)
    # A second parent different from the first whenever there are two to choose from.
    b = (a + rng.integers(1, max(len(parents), 2), size=n)) % len(parents)
    return np.where(rng.random((n, parents.shape[1])) < 0.5, parents[a], parents[b])


def unique_rows(K: Iterable[Iterable[int]]) -> List[Key]:
    """Keys of ``K`` in first-seen order, without repeats."""
    seen: Set[Key] = set()
    out: List[Key] = []
    for k in K:
        key = as_key(k)
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


__all__ = ["Window", "crossover", "mutate", "unique_rows"]
