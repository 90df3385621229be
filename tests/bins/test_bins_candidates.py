"""Locally free candidates on bins (Eq. 4-5), property-tested over random small spaces."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cafeslim.bins import GroupBins, SearchSpace, aligned_candidates, bin_choices, n_choices


@st.composite
def spaces(draw):
    """A space of 1-5 groups: random channels, bin size, blocks, order, offset."""
    groups = []
    for gid in range(draw(st.integers(1, 5))):
        size = draw(st.integers(1, 24))
        step = draw(st.integers(1, size))
        blocks = draw(st.sampled_from([1, 1, 2, 4]))
        order = tuple(draw(st.permutations(range(size))))
        bounds = tuple((s, min(s + step, size)) for s in range(0, size, step))
        groups.append(GroupBins(gid=gid, channels=size, blocks=blocks, sensitivity=1.0,
                                bin_size=step, bounds=bounds, order=order))
    r = draw(st.integers(0, 3))
    space = SearchSpace(graph=None, groups=groups, offset=r)
    k = [draw(st.integers(1, g.num_bins)) for g in groups]
    return space, k


def _bins_of(group: GroupBins, channels):
    """Which bins a set of (all-block) channel indices covers, from the group's order."""
    size = group.bounds[-1][1]
    pos = {c: i for i, c in enumerate(group.order)}
    local = sorted({c % size for c in channels})
    assert sorted(channels) == [b * size + c for b in range(group.blocks) for c in local]
    bins = {next(j for j, (a, z) in enumerate(group.bounds) if a <= pos[c] < z) for c in local}
    assert sum(group.bounds[b][1] - group.bounds[b][0] for b in bins) == len(local)  # whole bins
    return sorted(bins)


@settings(max_examples=150, deadline=None)
@given(spaces())
def test_candidates_keep_k_whole_bins_with_base_and_zone(case):
    space, k = case
    r = space.offset
    cands = space.candidates(k)
    assert cands[0] == space.fixed_spec(k)                    # candidate 0: the fixed pattern
    assert len(cands) == aligned_candidates(space, k) <= math.comb(2 * r + 1, r + 1)
    for spec in cands + space.sample_candidates(k, 5, np.random.default_rng(0))[len(cands):]:
        for g, kk in zip(space.groups, k):
            bins = _bins_of(g, spec[g.gid])
            assert len(bins) == kk                              # exactly k bins
            base = list(range(max(kk - r - 1, 0)))
            assert bins[:len(base)] == base                     # base bins always kept
            free = bins[len(base):]
            assert all(kk - 1 - r <= b <= kk - 1 + r and 0 <= b < g.num_bins for b in free)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), st.integers(0, 4), st.data())
def test_choice_counts(num_bins, r, data):
    k = data.draw(st.integers(1, num_bins))
    ch = bin_choices(k, num_bins, r)
    assert len(ch) == n_choices(k, num_bins, r) == len(set(ch))
    assert ch[0] == tuple(range(k))
    if r == 0:
        assert ch == (tuple(range(k)),)
    if r + 1 <= k <= num_bins - r:                              # away from the edges
        assert len(ch) == math.comb(2 * r + 1, r + 1)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 30), st.integers(0, 3), st.data())
def test_weight_sharing_degree_bounds(num_bins, r, data):
    """Eq. 4 on bins: for widths c <= c', cb/c <= d(c, c') <= 1 for every pair of choices."""
    c = data.draw(st.integers(1, num_bins))
    c2 = data.draw(st.integers(c, num_bins))
    cb = max(c - r - 1, 0)
    for a in bin_choices(c, num_bins, r):
        for b in bin_choices(c2, num_bins, r):
            d = len(set(a) & set(b)) / min(len(a), len(b))
            assert cb / c - 1e-12 <= d <= 1.0


@settings(max_examples=60, deadline=None)
@given(spaces())
def test_widths_match_kept_channels(case):
    space, k = case
    W = space.width_matrix(np.array(k))[0]
    spec = space.fixed_spec(k)
    assert [len(spec[g.gid]) for g in space.groups] == list(W)
    sample = space.sample(np.random.default_rng(0), 20)
    assert (sample >= space.min_bins).all() and (sample <= space.num_bins).all()
