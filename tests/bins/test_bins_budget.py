"""Budgets: parsing, uniform widths and random widths inside the FLOPs window."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from cafeslim.bins import (GroupBins, SearchSpace, channel_space, make_bins, min_space_flops,
                           parse_budget, random_widths, space_flops, uniform_widths)
from cafeslim.bins.budget import _ray_start, _stops_table
from cafeslim.errors import BudgetError
from cafeslim.export import slim
from cafeslim.flops import count_flops

FULL = 4.0e9


@pytest.mark.parametrize("text, want", [
    ("2G", 2e9), ("2g", 2e9), ("300M", 3e8), ("1.5e9", 1.5e9), ("50%", 2e9), ("0.5x", 2e9),
    ("2.5 GFLOPs", 2.5e9), (" 750m ", 7.5e8), ("4G", 4e9), ("100%", 4e9), (1e9, 1e9),
])
def test_parse_budget(text, want):
    assert parse_budget(text, FULL, 1e8) == pytest.approx(want)


@pytest.mark.parametrize("text, needle", [
    ("2 giga", "cannot read"), ("G2", "cannot read"), ("", "cannot read"), ("-1G", "cannot read"),
    ("50 percent", "cannot read"), ("0", "positive"), ("5G", "above the full model's 4.00G"),
    ("101%", "above"), ("50M", "below the smallest reachable model, 100.00M (2.5% of 4.00G)"),
])
def test_parse_budget_errors(text, needle):
    with pytest.raises(BudgetError) as exc:
        parse_budget(text, FULL, 1e8)
    assert needle in str(exc.value)


class Quadratic:
    """A stand-in FLOPs model: ``w.H.w + b.w`` with non-negative coefficients."""

    def __init__(self, S, seed):
        rng = np.random.default_rng(seed)
        A = rng.uniform(0, 1, (S, S))
        self.H = (A + A.T) / 2 * (rng.uniform(size=(S, S)) < 0.6)
        self.b = rng.uniform(0, 3, S)

    def evaluate(self, W):
        W = np.asarray(W, dtype=float)
        return np.einsum("ij,jk,ik->i", W, self.H, W) + W @ self.b


def _space(sizes, steps):
    groups = [GroupBins(gid=i, channels=n, blocks=1, sensitivity=1.0, bin_size=s,
                        bounds=tuple((a, min(a + s, n)) for a in range(0, n, s)))
              for i, (n, s) in enumerate(zip(sizes, steps))]
    return SearchSpace(graph=None, groups=groups)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_widths_is_close_to_uniform_on_the_window(seed):
    space = _space([9, 7, 12, 6], [1, 1, 2, 1])
    fm = Quadratic(4, seed)
    full = space_flops(space, fm, space.num_bins)[0]
    budget, low = 0.45 * full, 0.9
    every = np.array(list(itertools.product(*[range(1, k + 1) for k in space.num_bins])))
    f = space_flops(space, fm, every)
    inside = every[(f >= low * budget) & (f <= budget)]
    assert 20 < len(inside) < len(every) / 5                  # a thin window, not the whole box
    K = random_widths(space, fm, budget, 20000, np.random.default_rng(seed), low=low)
    fk = space_flops(space, fm, K)
    assert ((fk >= low * budget) & (fk <= budget)).all()
    # Every window point shows up about equally often (total variation from uniform).
    index = {tuple(v): i for i, v in enumerate(inside)}
    counts = np.bincount([index[tuple(v)] for v in K], minlength=len(inside))
    tv = 0.5 * np.abs(counts / counts.sum() - 1 / len(inside)).sum()
    assert (counts > 0).all() and tv < 0.08, tv


def test_ray_start_lands_in_the_window():
    space = _space([9, 7, 12, 6], [1, 1, 2, 1])
    fm = Quadratic(4, 3)
    full = space_flops(space, fm, space.num_bins)[0]
    K = _ray_start(space, fm, 0.3 * full, 0.32 * full, 500, np.random.default_rng(0))
    f = space_flops(space, fm, K)
    assert ((f >= 0.3 * full) & (f <= 0.32 * full)).all()
    assert _stops_table(space).shape == (4, 10)


def test_coarse_bins_that_cannot_hit_the_window_say_so():
    space = _space([4, 4], [2, 2])                             # 2 x 2 widths only
    fm = Quadratic(2, 0)
    f = np.sort(space_flops(space, fm, np.array(list(itertools.product([1, 2], [1, 2])))))
    budget = (f[1] + f[2]) / 2                                  # window between two points
    low = (f[1] + 1e-6) / budget
    with pytest.raises(BudgetError, match="too coarse"):
        random_widths(space, fm, budget, 10, np.random.default_rng(0), low=low)
    with pytest.raises(BudgetError, match="too coarse"):
        uniform_widths(space, fm, budget, low=low)
    with pytest.raises(BudgetError, match="below the smallest"):
        uniform_widths(space, fm, f[0] / 2)


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_efficientnet"])
def test_widths_land_in_the_window_and_fvcore_agrees(analysed, name):
    a = analysed(name, with_model_flops=True)
    rng = np.random.default_rng(0)
    for space in (make_bins(a.graph, a.fm, beta=1.0), channel_space(a.graph, a.fm)):
        for frac in (0.3, 0.5, 0.8):
            budget = frac * a.fm.full
            assert budget > min_space_flops(space, a.fm)
            ku = uniform_widths(space, a.fm, budget)
            kr = random_widths(space, a.fm, budget, 200, rng)
            for K in (ku[None], kr):
                f = space_flops(space, a.fm, K)
                assert ((f >= 0.97 * budget) & (f <= budget)).all(), (frac, f / budget)
            if frac != 0.5:
                continue                                  # fvcore is slow: one budget is enough
            for k in (ku, kr[0]):
                small = slim(a.model, a.graph, space.fixed_spec(k))
                truth = count_flops(small, a.x)
                assert truth == pytest.approx(space_flops(space, a.fm, k)[0], rel=1e-4)
                assert 0.97 * budget * (1 - 1e-4) <= truth <= budget * (1 + 1e-4)


def test_uniform_widths_is_uniform_on_the_channel_space(analysed):
    a = analysed("timm:test_resnet")
    space = channel_space(a.graph, a.fm)
    k = uniform_widths(space, a.fm, 0.5 * a.fm.full)
    fr = k / space.num_bins
    # one multiplier, plus at most a few one-channel greedy nudges
    assert np.ptp(fr) <= 2.0 / space.num_bins.min() + 1e-9


def test_full_budget_gives_the_full_model(analysed):
    a = analysed("timm:test_resnet")
    space = make_bins(a.graph, a.fm)
    assert (uniform_widths(space, a.fm, a.fm.full) == space.num_bins).all()


@pytest.mark.slow
def test_random_widths_resnet50_speed(analysed):
    a = analysed("tv:resnet50")
    space = make_bins(a.graph, a.fm, beta=1.0)
    budget = 0.5 * a.fm.full
    t = time.perf_counter()
    K = random_widths(space, a.fm, budget, 2000, np.random.default_rng(0))
    dt = time.perf_counter() - t
    f = space_flops(space, a.fm, K)
    assert ((f >= 0.97 * budget) & (f <= budget)).all()
    assert dt < 2.0, dt
