"""The search space: bins per searchable group and the locally free candidates of a width.

A width vector ``k`` gives, for every searchable group, how many of its ``K`` bins a
sub-network keeps. With offset ``r`` (Eq. 5, applied to bins) the kept bins are the base
bins ``[0, k-r-1)`` plus ``k - |base|`` free bins chosen from the zone
``[k-1-r, k-1+r] ∩ [0, K)``. Channels are numbered in importance order (``order``), so
bin ``b`` of a group holds channels ``order[start_b:stop_b]``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import SpecError
from ..graph import ChannelGraph, IndexSpec


@dataclass(frozen=True)
class GroupBins:
    """Bins of one searchable group.

    Attributes:
        gid: group id in the channel graph.
        channels: channels of the group (of one block when the group is blocked).
        blocks: the group's block count; every block keeps the same local channels.
        sensitivity: ε_g, the marginal FLOPs of one channel (Eq. 7, generalised).
        bin_size: nominal channels per bin (Eq. 9); the last bin may be smaller.
        bounds: ``(start, stop)`` of every bin, in importance-ordered local positions.
        min_bins: the fewest bins a sub-network may keep.
        order: local channel index at each importance position (most important first).
    """

    gid: int
    channels: int
    blocks: int
    sensitivity: float
    bin_size: int
    bounds: Tuple[Tuple[int, int], ...]
    min_bins: int = 1
    order: Tuple[int, ...] = ()

    @property
    def num_bins(self) -> int:
        return len(self.bounds)

    def local_channels(self, bins: Sequence[int]) -> List[int]:
        """Sorted local channel indices of the given bins."""
        order = self.order or tuple(range(self.bounds[-1][1]))
        return sorted(order[i] for b in bins for i in range(*self.bounds[b]))

    def channel_indices(self, bins: Sequence[int]) -> List[int]:
        """Sorted group channel indices (all blocks) of the given bins."""
        local = self.local_channels(bins)
        size = self.bounds[-1][1]
        return [blk * size + i for blk in range(self.blocks) for i in local]

    def width(self, k: int) -> int:
        """Channels kept by the first ``k`` bins (all blocks)."""
        return self.bounds[k - 1][1] * self.blocks if k > 0 else 0


@lru_cache(maxsize=4096)
def bin_choices(k: int, num_bins: int, r: int) -> Tuple[Tuple[int, ...], ...]:
    """All kept-bin sets of width ``k`` of ``num_bins`` with offset ``r`` (Eq. 5), sorted.

    The first choice is always the fixed pattern ``0..k-1``.

    Example:
        >>> bin_choices(3, 6, 1)
        ((0, 1, 2), (0, 1, 3), (0, 2, 3))
    """
    if not 1 <= k <= num_bins:
        raise SpecError(f"width {k} outside [1, {num_bins}]")
    base = tuple(range(max(k - r - 1, 0)))
    zone = [b for b in range(k - 1 - r, k + r) if 0 <= b < num_bins and b not in base]
    n_free = k - len(base)
    free = sorted(itertools.combinations(zone, n_free))
    fixed = tuple(range(k))
    out = [base + f for f in free]
    out.sort(key=lambda c: (c != fixed, c))
    return tuple(out)


@dataclass
class SearchSpace:
    """Bins of every searchable group, plus how widths become IndexSpecs.

    Attributes:
        graph: the channel graph.
        groups: one :class:`GroupBins` per searchable group, in ``graph.searchable`` order.
        offset: r of Eq. 5 (0 = the fixed pattern).
        beta: minimum bin size of Eq. 9.
        divisor: every width is a multiple of it (per block).
    """

    graph: ChannelGraph
    groups: List[GroupBins]
    offset: int = 1
    beta: float = 1.0
    divisor: int = 1
    meta: Dict[str, object] = field(default_factory=dict)

    @property
    def num_bins(self) -> np.ndarray:
        return np.array([g.num_bins for g in self.groups], dtype=np.int64)

    @property
    def min_bins(self) -> np.ndarray:
        return np.array([g.min_bins for g in self.groups], dtype=np.int64)

    @property
    def log10_size(self) -> float:
        """log10 of the number of width vectors (Eq. 14 for one stage)."""
        return float(np.sum(np.log10(self.num_bins - self.min_bins + 1)))

    def widths(self, k: Sequence[int]) -> Dict[int, int]:
        """Group id -> channels for a width vector of bin counts (fixed pattern)."""
        return {g.gid: g.width(int(kk)) for g, kk in zip(self.groups, k)}

    def width_matrix(self, K: np.ndarray) -> np.ndarray:
        """Channel widths for many bin-count vectors at once ([N, S] -> [N, S])."""
        K = np.atleast_2d(np.asarray(K, dtype=np.int64))
        out = np.empty(K.shape, dtype=np.float64)
        for j, g in enumerate(self.groups):
            stops = np.array([0] + [b[1] for b in g.bounds], dtype=np.float64) * g.blocks
            out[:, j] = stops[K[:, j]]
        return out

    def full(self) -> np.ndarray:
        return self.num_bins.copy()

    def spec(self, kept_bins: Sequence[Sequence[int]]) -> IndexSpec:
        """IndexSpec from the kept bins of every group."""
        return {g.gid: g.channel_indices(b) for g, b in zip(self.groups, kept_bins)}

    def fixed_spec(self, k: Sequence[int]) -> IndexSpec:
        """The fixed (AutoSlim-style, r = 0) sub-network of width vector ``k``."""
        return self.spec([range(int(kk)) for kk in k])

    def choices(self, k: Sequence[int], r: Optional[int] = None) -> List[Tuple[Tuple[int, ...], ...]]:
        """Per group, every locally free kept-bin set of its width.

        A group's last bin may be smaller than the others; a set that swaps it in for a full
        bin would be a narrower (cheaper) network than the width says, so such sets are left
        out: every candidate of ``k`` has exactly the channels, and FLOPs, of ``k``.
        """
        r = self.offset if r is None else r
        out = []
        for g, kk in zip(self.groups, k):
            ch = bin_choices(int(kk), g.num_bins, r)
            sizes = [b - a for a, b in g.bounds]
            if len(set(sizes)) > 1:
                want = sum(sizes[: int(kk)])
                ch = tuple(c for c in ch if sum(sizes[b] for b in c) == want)
            out.append(ch)
        return out

    def candidates(self, k: Sequence[int], r: Optional[int] = None) -> List[IndexSpec]:
        """The aligned candidates S_c of ``k``: choice ``c`` in every group (clipped).

        Candidate 0 is always the fixed pattern. With r = 0 there is exactly one.
        """
        ch = self.choices(k, r)
        n = max(len(c) for c in ch) if ch else 1
        return [self.spec([c[min(i, len(c) - 1)] for c in ch]) for i in range(n)]

    def sample_candidates(self, k: Sequence[int], n: int, rng: np.random.Generator,
                          r: Optional[int] = None) -> List[IndexSpec]:
        """The aligned candidates plus ``n`` more that mix choices per group at random."""
        ch = self.choices(k, r)
        out = self.candidates(k, r)
        for _ in range(n):
            out.append(self.spec([c[int(rng.integers(len(c)))] for c in ch]))
        return out

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """``n`` width vectors uniform over each group's bins (within min_bins)."""
        lo, hi = self.min_bins, self.num_bins
        return rng.integers(lo, hi + 1, size=(n, len(self.groups)))
