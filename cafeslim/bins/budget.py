"""FLOPs budgets: parsing, the "Uniform" baseline widths, and random widths inside a window.

A budget ``B`` comes with a window ``[low · B, B]`` (``low = 0.97`` by default): a width vector
is *valid* when the FLOPs model puts it inside. Widths here are bin-count vectors of a
:class:`~cafeslim.bins.space.SearchSpace` (``k[g]`` bins of group ``g``, fixed pattern), and
their FLOPs are :meth:`FlopsModel.evaluate` of :meth:`SearchSpace.width_matrix`.

FLOPs only grow with any width (every cost coefficient is non-negative), which is what makes
bisection along a ray of width vectors, and the interval structure used below, work.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

import numpy as np

from ..errors import BudgetError
from ..flops import FlopsModel
from ..units import human as human_flops  # noqa: F401 - part of this module's API
from .space import SearchSpace

DEFAULT_LOW = 0.97

_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt%x×]?)\s*(?:flops)?\s*$",
                     re.IGNORECASE)
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_budget(text: Union[str, float, int], full_flops: float, min_flops: float = 0.0) -> float:
    """A FLOPs budget from ``2G``, ``300M``, ``1.5e9``, ``50%`` (of the full model) or ``0.5x``.

    Suffixes are case-insensitive (``2g``, ``300m``, ``2 GFLOPs``); ``K`` and ``T`` work too.

    Args:
        text: the budget as written (a plain number is absolute FLOPs).
        full_flops: FLOPs of the full model.
        min_flops: FLOPs of the smallest model the space can reach.

    Returns:
        The budget in FLOPs.

    Raises:
        BudgetError: malformed, not positive, above the full model, or below ``min_flops``
            (the message names the smallest reachable model).

    Example:
        >>> parse_budget("50%", 4.0e9, 1.0e8)
        2000000000.0
        >>> parse_budget("300M", 4.0e9)
        300000000.0
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _BUDGET.match(str(text))
        if m is None:
            raise BudgetError(f"cannot read FLOPs budget {str(text)!r}: write it as 2G, 300M, 1.5e9, "
                              "50% (of the full model) or 0.5x")
        number, unit = float(m.group(1)), m.group(2).lower()
        if unit == "%":
            value = number / 100.0 * full_flops
        elif unit in ("x", "×"):
            value = number * full_flops
        else:
            value = number * _SCALE[unit]
    if not value > 0 or not math.isfinite(value):
        raise BudgetError(f"FLOPs budget {text!r} must be positive")
    if value > full_flops * (1 + 1e-9):
        raise BudgetError(f"FLOPs budget {human_flops(value)} ({text}) is above the full model's "
                          f"{human_flops(full_flops)}")
    if value < min_flops:
        raise BudgetError(f"FLOPs budget {human_flops(value)} ({text}) is below the smallest "
                          f"reachable model, {human_flops(min_flops)} "
                          f"({min_flops / full_flops:.1%} of {human_flops(full_flops)})")
    return value


def space_flops(space: SearchSpace, fm: FlopsModel, K: np.ndarray) -> np.ndarray:
    """FLOPs of bin-count vectors ``K`` ([N, S] or [S]) under the fixed pattern.

    Example:
        >>> space_flops(space, fm, space.full())                    # doctest: +SKIP
        array([4.11151258e+09])
    """
    return fm.evaluate(space.width_matrix(K))


def min_space_flops(space: SearchSpace, fm: FlopsModel) -> float:
    """FLOPs of the smallest width vector of the space (every group at ``min_bins``).

    Example:
        >>> min_space_flops(space, fm) < fm.full                    # doctest: +SKIP
        True
    """
    return float(space_flops(space, fm, space.min_bins)[0])


def _check_window(space: SearchSpace, fm: FlopsModel, budget: float, low: float) -> None:
    if not 0 < low <= 1:
        raise BudgetError(f"the lower window must be in (0, 1], got {low}")
    smallest = min_space_flops(space, fm)
    if budget < smallest:
        raise BudgetError(f"FLOPs budget {human_flops(budget)} is below the smallest reachable "
                          f"model, {human_flops(smallest)}")


def _uniform_k(space: SearchSpace, m: float) -> np.ndarray:
    K = space.num_bins
    return np.clip(np.floor(m * K + 0.5).astype(np.int64), space.min_bins, K)


def uniform_widths(space: SearchSpace, fm: FlopsModel, budget: float,
                   low: float = DEFAULT_LOW) -> np.ndarray:
    """One multiplier ``m`` for every searchable group (the paper's "Uniform" baseline).

    Group ``g`` keeps ``round(m · K_g)`` of its ``K_g`` bins (at least ``min_bins``). Bins make
    that a step function of ``m``, so the bisection runs over its breakpoints (exact, one
    FLOPs evaluation per step) and finds the widest uniform vector with ``FLOPs ≤ budget``.
    Groups with equal bin counts step together (26 of ResNet-50's 37 groups have 64 bins at
    β = 1), so that vector can fall more than ``1 - low`` below the budget; then bins are added
    one at a time, each to the group with the smallest kept fraction whose extra bin still fits,
    until the FLOPs reach ``low · budget``. The result stays as uniform as the bins allow.

    Args:
        space: the search space (:func:`~cafeslim.bins.make.channel_space` for per-channel
            widths).
        fm: its FLOPs model.
        budget: FLOPs upper bound; the window is ``[low · budget, budget]``.
        low: lower end of the window, as a fraction of the budget.

    Returns:
        ``[S]`` int64 bin counts inside the window (the full vector when the budget allows it).

    Raises:
        BudgetError: below the smallest model, or no such vector lands in the window (bins too
            coarse; a smaller β or a lower ``low`` helps).

    Example:
        >>> k = uniform_widths(space, fm, 0.5 * fm.full)               # doctest: +SKIP
        >>> 0.97 <= space_flops(space, fm, k)[0] / (0.5 * fm.full) <= 1  # doctest: +SKIP
        True
    """
    _check_window(space, fm, budget, low)
    K = space.num_bins
    if space_flops(space, fm, K)[0] <= budget:
        return K.copy()
    # m at which group g moves to j bins: round(m K) = j  <=>  m >= (j - 0.5) / K.
    bp = np.unique(np.concatenate([(np.arange(1, k + 1) - 0.5) / k for k in K] + [np.zeros(1)]))
    lo, hi = 0, len(bp) - 1          # invariant: F(bp[lo]) <= budget < F(bp[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if space_flops(space, fm, _uniform_k(space, bp[mid]))[0] <= budget:
            lo = mid
        else:
            hi = mid
    k = _uniform_k(space, bp[lo])
    f = space_flops(space, fm, k)[0]
    eye = np.eye(len(K), dtype=np.int64)
    while f < low * budget:
        cand = k[None, :] + eye                       # one more bin in each group
        ok = k < K
        fc = np.full(len(K), np.inf)
        fc[ok] = space_flops(space, fm, np.minimum(cand[ok], K))
        ok &= fc <= budget
        if not ok.any():
            raise BudgetError(
                f"no uniform width lands in [{human_flops(low * budget)}, {human_flops(budget)}]: "
                f"the closest below is {human_flops(f)}; the bins are too coarse for this window "
                "(use a smaller beta or a lower window)")
        frac = np.where(ok, k / K, np.inf)
        g = int(np.lexsort((-np.where(ok, fc, 0), frac))[0])   # smallest fraction, then larger step
        k, f = cand[g], fc[g]
    return k


# --------------------------------------------------------------------------- random widths

def _stops_table(space: SearchSpace) -> np.ndarray:
    """``[S, max K + 1]`` channels of ``k`` bins (padded with the full width)."""
    K = space.num_bins
    table = np.zeros((len(K), int(K.max()) + 1 if len(K) else 1))
    for j, g in enumerate(space.groups):
        stops = np.array([0] + [b[1] for b in g.bounds], dtype=np.float64) * g.blocks
        table[j, :len(stops)] = stops
        table[j, len(stops):] = stops[-1]
    return table


def _ray_start(space: SearchSpace, fm: FlopsModel, lo_f: float, hi_f: float, n: int,
               rng: np.random.Generator, rounds: int = 30) -> np.ndarray:
    """``n`` window points: random directions in the box, scaled by bisection to a random
    FLOPs level inside the window. Chains that cannot land (a jump over the window) redraw."""
    mins, K = space.min_bins, space.num_bins
    span = (K - mins + 1).astype(np.float64)
    out = np.zeros((n, len(K)), dtype=np.int64)
    todo = np.arange(n)
    for _ in range(rounds):
        m = len(todo)
        d = rng.uniform(1e-6, 1.0, size=(m, len(K)))
        target = rng.uniform(lo_f, hi_f, size=m)
        k_at = lambda t: np.minimum(mins + np.floor(t[:, None] * d * span).astype(np.int64), K)
        t_lo, t_hi = np.zeros(m), 1.0 / d.min(1)       # F(k(t_hi)) = full >= hi_f
        for _ in range(48):
            t = (t_lo + t_hi) / 2
            below = space_flops(space, fm, k_at(t)) <= target
            t_lo, t_hi = np.where(below, t, t_lo), np.where(below, t_hi, t)
        k = k_at(t_lo)
        f = space_flops(space, fm, k)
        good = (f >= lo_f) & (f <= hi_f)
        out[todo[good]] = k[good]
        todo = todo[~good]
        if not len(todo):
            return out
    if len(todo) == n:
        raise BudgetError(f"no width vector of this space lands in [{human_flops(lo_f)}, "
                          f"{human_flops(hi_f)}]; the bins are too coarse for the window "
                          "(use a smaller beta or a lower window)")
    done = np.setdiff1d(np.arange(n), todo)
    out[todo] = out[rng.choice(done, size=len(todo))]   # the chains will move them apart
    return out


def _tilted_start(space: SearchSpace, fm: FlopsModel, lo_f: float, hi_f: float, n: int,
                  rng: np.random.Generator, table: np.ndarray, rounds: int = 8) -> np.ndarray:
    """Window points drawn from a product of per-group tilted distributions, then filtered.

    Uniform on a thin FLOPs shell of a high-dimensional box is close to the product of
    ``p_g(k) ∝ exp(λ · ∂F/∂w_g · w_g(k))`` with ``λ`` set so the mean lands mid-window and the
    gradient taken at that mean (a few fixed-point rounds; the "equivalence of ensembles").
    Samples from that product that fall inside the window are a good start for the walk.
    Rows that cannot be filled this way stay ``-1``.
    """
    mins, K = space.min_bins, space.num_bins
    S = len(K)
    cols = np.arange(table.shape[1])
    valid = (cols[None, :] >= mins[:, None]) & (cols[None, :] <= K[:, None])
    full = table[np.arange(S), K]
    target = (lo_f + hi_f) / 2

    def dist(lam: float, grad: np.ndarray) -> np.ndarray:
        logit = np.where(valid, lam * grad[:, None] * table, -np.inf)
        p = np.exp(logit - logit.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    wbar, p = 0.5 * full, None
    for _ in range(4):
        d = np.maximum(1.0, 0.01 * wbar)
        f = fm.evaluate(np.vstack([wbar, wbar + np.diag(d)]))
        grad = np.maximum((f[1:] - f[0]) / d, 0.0)
        scale = float((grad * full).max())
        if not scale > 0:
            break
        a, b = -200.0 / scale, 200.0 / scale   # logits of at most ±200 across a group
        for _ in range(50):
            lam = (a + b) / 2
            p = dist(lam, grad)
            wbar = (p * table).sum(1)
            if fm.evaluate(wbar[None])[0] < target:
                a = lam
            else:
                b = lam
    out = np.full((n, S), -1, dtype=np.int64)
    if p is None:
        return out
    cdf = np.cumsum(p, 1)
    got = 0
    for _ in range(rounds):
        u = rng.random((4 * n, S))
        k = np.stack([np.searchsorted(cdf[j], u[:, j] * cdf[j, -1]) for j in range(S)], 1)
        k = np.clip(k, mins, K)
        f = space_flops(space, fm, k)
        k = k[(f >= lo_f) & (f <= hi_f)][:n - got]
        out[got:got + len(k)] = k
        got += len(k)
        if got == n:
            break
    return out


def random_widths(space: SearchSpace, fm: FlopsModel, budget: float, n: int,
                  rng: Optional[np.random.Generator] = None, low: float = DEFAULT_LOW,
                  sweeps: int = 10) -> np.ndarray:
    """``n`` bin-count vectors, approximately uniform among those inside ``[low·B, B]``.

    Rejection from the whole box is hopeless when the window is a thin FLOPs shell: for
    ResNet-50 (β = 1) at 50 % only 2 in 10,000 uniform box points land in ``[0.97 B, B]``.
    Instead:

    1. **Start** ``n`` independent chains inside the window, drawn from a product of per-group
       *tilted* distributions ``p_g(k) ∝ exp(λ · ∂F/∂w_g · w_g(k))`` (λ and the gradient fixed
       so that the mean sits mid-window) and kept when they land in the window (about 10 % do
       for ResNet-50 at 50 %). Uniform on a thin shell of a high-dimensional box is close to
       such a product, so this start is already close to the target, but not exact: inside the
       window its density still varies as ``exp(λ ∂F·w)``. Chains that do not get a start this
       way (tiny or odd spaces) take a random direction in the box, scaled by bisection to a
       random FLOPs level in the window (monotone in the scale), a start that over-weights
       balanced vectors.
    2. **Walk** every chain ``sweeps · S`` Metropolis steps, all chains at once (one FLOPs
       evaluation of ``[n, S]`` per step). Proposals are symmetric: re-draw one group's bins
       uniformly, move one group by ±1..D bins, or move the same number of bins from one group
       to another (which follows the FLOPs shell); a proposal is accepted iff it stays in the
       window. Each chain's stationary distribution is therefore exactly uniform on the
       window's points, and the walk removes what is left of the start's bias.

    What comes out is *approximately* uniform: on ResNet-50 at 50 % the per-group mean kept
    fraction agrees with exact rejection sampling to about 0.01 (within its sampling noise);
    on small spaces the tests compare with exact enumeration. Vectors are drawn with
    replacement; duplicates are possible in tiny spaces.

    Args:
        space: the search space.
        fm: its FLOPs model.
        budget: FLOPs upper bound.
        n: how many vectors.
        rng: numpy Generator (a fresh unseeded one when None).
        low: lower end of the window, as a fraction of the budget.
        sweeps: Metropolis steps per chain, in units of S (the number of groups).

    Returns:
        ``[n, S]`` int64 bin counts, every row inside the window per the FLOPs model.

    Raises:
        BudgetError: budget below the smallest model, or no vector lands in the window.

    Example:
        >>> K = random_widths(space, fm, 0.5 * fm.full, 2000, np.random.default_rng(0))  # doctest: +SKIP
        >>> K.shape                                                  # doctest: +SKIP
        (2000, 37)
    """
    rng = rng if rng is not None else np.random.default_rng()
    _check_window(space, fm, budget, low)
    lo_f, hi_f = low * budget, budget
    S = len(space.groups)
    if n <= 0 or S == 0:
        return np.zeros((max(n, 0), S), dtype=np.int64)
    table = _stops_table(space)
    k = _tilted_start(space, fm, lo_f, hi_f, n, rng, table)
    miss = k[:, 0] < 0
    if miss.any():
        k[miss] = _ray_start(space, fm, lo_f, hi_f, int(miss.sum()), rng)
    return _walk(space, fm, k, table, lo_f, hi_f, rng, sweeps * S)


def _walk(space: SearchSpace, fm: FlopsModel, k: np.ndarray, table: np.ndarray, lo_f: float,
          hi_f: float, rng: np.random.Generator, steps: int) -> np.ndarray:
    """Step 2 of :func:`random_widths`: ``steps`` Metropolis steps of every chain at once."""
    n, S = k.shape
    mins, K = space.min_bins, space.num_bins
    W = table[np.arange(S), k]
    rows = np.arange(n)
    span = K - mins + 1
    step_max = np.maximum(1, np.ceil(span / 8)).astype(np.int64)     # D of the one-group moves
    movable = np.flatnonzero(K > mins)
    if not len(movable):
        return k
    for _ in range(steps):
        # kind < 0.2: re-draw group i; < 0.5: move i by ±a; else: move i by ±a and j by ∓a.
        # Each proposal is its own inverse's mirror (same i, j, a; opposite sign), so symmetric.
        kind = rng.random(n)
        i = movable[rng.integers(len(movable), size=n)]
        j = movable[rng.integers(len(movable), size=n)]
        sign = rng.choice((-1, 1), size=n)
        pair = (kind >= 0.5) & (i != j)
        # Pair moves shift the same number of bins from one group to another: FLOPs-sensitive
        # bins cost about the same, so these follow the FLOPs shell and stay in the window more
        # often than one-group moves of the same size.
        pair_max = np.maximum(1, np.ceil(np.minimum(span[i], span[j]) / 4)).astype(np.int64)
        a_pair = 1 + rng.integers(0, pair_max)
        a_one = 1 + rng.integers(0, step_max[i])
        ki = np.where(kind < 0.2, rng.integers(mins[i], K[i] + 1),
                      k[rows, i] + sign * np.where(pair, a_pair, a_one))
        kj = k[rows, j] - sign * a_pair
        ok = (ki >= mins[i]) & (ki <= K[i]) & (~pair | ((kj >= mins[j]) & (kj <= K[j])))
        ki, kj = np.clip(ki, mins[i], K[i]), np.clip(kj, mins[j], K[j])
        Wp = W.copy()
        Wp[rows, i] = table[i, ki]
        Wp[rows, j] = np.where(pair, table[j, kj], Wp[rows, j])
        f = fm.evaluate(Wp)
        acc = ok & (f >= lo_f) & (f <= hi_f)
        a = rows[acc]
        k[a, i[acc]] = ki[acc]
        pa = acc & pair
        k[rows[pa], j[pa]] = kj[pa]
        W[acc] = Wp[acc]
    return k
