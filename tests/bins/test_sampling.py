"""Budget-aware width sampling of the min-min step (``MinMinConfig.sampling``)."""

from __future__ import annotations

import numpy as np
import pytest

from cafeslim.bins import space_flops
from cafeslim.bins.sampling import WidthSampler, make_sampler
from cafeslim.config import MinMinConfig
from cafeslim.errors import ConfigError


@pytest.fixture(scope="module")
def net(small_cnn, space_of):
    b = small_cnn()
    return b, space_of(b)


def _in_window(space, fm, K, budget, low=0.97):
    f = space_flops(space, fm, np.asarray(K))
    return (f >= low * budget) & (f <= budget)


def _draws(sampler, n=200, seed=1):
    rng = np.random.default_rng(seed)
    return np.stack([sampler.sample(rng) for _ in range(n)])


def test_budget_draws_lie_in_the_window(net):
    b, space = net
    budget = 0.5 * b.fm.full
    K = _draws(WidthSampler(space, b.fm, [budget], mode="budget", seed=0))
    assert _in_window(space, b.fm, K, budget).all()
    assert len({tuple(k) for k in K}) > 20  # a pool, not one vector


def test_two_budgets_are_both_trained(net):
    b, space = net
    lo, hi = 0.3 * b.fm.full, 0.7 * b.fm.full
    K = _draws(WidthSampler(space, b.fm, [lo, hi], mode="budget", seed=0))
    a, c = _in_window(space, b.fm, K, lo), _in_window(space, b.fm, K, hi)
    assert (a | c).all() and a.sum() > 50 and c.sum() > 50


def test_mixed_lies_between_uniform_and_budget(net):
    b, space = net
    budget = 0.5 * b.fm.full
    share = {mode: _in_window(space, b.fm, _draws(WidthSampler(
        space, b.fm, [budget], mode=mode, mix=0.5, seed=0)), budget).mean()
        for mode in ("uniform", "mixed", "budget")}
    assert share["uniform"] < share["mixed"] < share["budget"] == 1.0
    assert 0.3 < share["mixed"] < 0.8


def test_uniform_is_eq1_exactly(net):
    b, space = net
    sampler = WidthSampler(space, b.fm, [], mode="uniform")
    r1, r2 = np.random.default_rng(4), np.random.default_rng(4)
    for _ in range(5):
        assert np.array_equal(sampler.sample(r1), space.sample(r2, 1)[0])


def test_same_seed_same_pool_and_draws(net):
    b, space = net
    budget = 0.5 * b.fm.full
    make = lambda: WidthSampler(space, b.fm, [budget], mode="mixed", seed=7)
    assert np.array_equal(_draws(make(), 50, seed=3), _draws(make(), 50, seed=3))
    frac = make().flops_fraction([space.num_bins, space.min_bins])
    assert frac[0] == pytest.approx(1.0) and 0 < frac[1] < 1


def test_bad_settings(net):
    b, space = net
    with pytest.raises(ConfigError, match="sampling_mix"):
        MinMinConfig(sampling="mixed", sampling_mix=1.5)
    with pytest.raises(ConfigError, match="needs a FLOPs budget"):
        WidthSampler(space, b.fm, [], mode="budget")
    assert make_sampler(space, None, [1.0], MinMinConfig(), 0) is None
    assert make_sampler(space, b.fm, [], MinMinConfig(), 0).mode == "uniform"
