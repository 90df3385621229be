"""FLOPs-sensitive bins (Eq. 6-9): sensitivities, bin sizes, spread, options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cafeslim.bins import (bin_spread, bins_json, channel_order, channel_space, flops_per_bin,
                           make_bins, sensitivities, stage_log10_sizes)
from cafeslim.errors import ConfigError
from cafeslim.flops import FlopsModel
from cafeslim.graph import analyze


def _eq6(cin, cout, hw, k):
    """Eq. 6: FLOPs(c_in, c_out) = c_in * c_out * H * W * K^2."""
    return cin * cout * hw * k * k


def test_sensitivity_is_eq7_on_a_plain_conv_chain(conv_chain):
    # widths 3 -> 8 -> 16 -> 12, kernels 3, 3, 1, output maps 16x16, 8x8, 8x8, then a linear.
    eps = dict(zip([g.id for g in conv_chain.graph.searchable],
                   sensitivities(conv_chain.graph, conv_chain.fm)))
    widths = {g.id: g.channels for g in conv_chain.graph.searchable}
    by_width = {w: eps[gid] for gid, w in widths.items()}
    assert by_width[8] == _eq6(3, 1, 256, 3) + _eq6(1, 16, 64, 3)
    assert by_width[16] == _eq6(8, 1, 64, 3) + _eq6(1, 12, 64, 1)
    assert by_width[12] == _eq6(16, 1, 64, 1) + 1 * 5       # the next layer is Linear(12, 5)


def test_bin_size_is_eq9(conv_chain):
    g, fm = conv_chain.graph, conv_chain.fm
    eps = sensitivities(g, fm)
    for beta in (0.25, 0.5, 1.0, 2.0, 4.0):
        space = make_bins(g, fm, beta=beta)
        for gb, e in zip(space.groups, eps):
            want = max(1, math.floor(beta * eps.max() / e + 0.5))
            assert gb.bin_size == min(want, gb.channels)
            sizes = [b - a for a, b in gb.bounds]
            assert gb.bounds[0][0] == 0 and gb.bounds[-1][1] == gb.channels
            assert all(s == gb.bin_size for s in sizes[:-1]) and 0 < sizes[-1] <= gb.bin_size
            assert all(a[1] == b[0] for a, b in zip(gb.bounds, gb.bounds[1:]))


def test_smaller_beta_never_gives_fewer_bins(conv_chain):
    sizes = [make_bins(conv_chain.graph, conv_chain.fm, beta=b).log10_size for b in (4, 2, 1, .5, .25)]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("name", ["tv:resnet50", "tv:mobilenet_v2", "tv:efficientnet_b0"])
def test_flops_per_bin_is_even(analysed, name):
    a = analysed(name)
    space = make_bins(a.graph, a.fm, beta=1.0)
    uniform = make_bins(a.graph, a.fm, mode="uniform", num_bins=int(round(space.num_bins.mean())))
    spread, spread_uniform = bin_spread(space), bin_spread(uniform)
    print(f"{name}: FLOPs per bin max/min {spread:.2f} (FLOPs-sensitive) vs {spread_uniform:.2f} (uniform)")
    assert spread <= 2.0
    assert spread_uniform > 3 * spread


def test_resnet50_has_the_papers_37_groups(analysed):
    a = analysed("tv:resnet50")
    assert len(make_bins(a.graph, a.fm).groups) == 37


def test_uniform_bins_are_equal(conv_chain):
    space = make_bins(conv_chain.graph, conv_chain.fm, mode="uniform", num_bins=3)
    for gb in space.groups:
        sizes = [b - a for a, b in gb.bounds]
        assert len(sizes) == min(3, gb.channels) and max(sizes) - min(sizes) <= 1
    finest = channel_space(conv_chain.graph, conv_chain.fm)
    assert [gb.num_bins for gb in finest.groups] == [g.channels for g in conv_chain.graph.searchable]


def test_divisor_makes_widths_multiples(conv_chain):
    space = make_bins(conv_chain.graph, conv_chain.fm, beta=0.25, divisor=4)
    for gb in space.groups:
        assert gb.bin_size % 4 == 0 or gb.bin_size == gb.channels
        assert all(gb.width(k) % 4 == 0 for k in range(1, gb.num_bins))


def test_min_width_channels_and_fraction(conv_chain):
    g, fm = conv_chain.graph, conv_chain.fm
    space = make_bins(g, fm, beta=0.25, min_width=4)
    assert all(gb.width(gb.min_bins) >= min(4, gb.channels) for gb in space.groups)
    assert all(gb.min_bins == 1 or gb.width(gb.min_bins - 1) < 4 for gb in space.groups)
    half = make_bins(g, fm, beta=0.25, min_width=0.5)
    assert all(gb.width(gb.min_bins) >= gb.channels / 2 for gb in half.groups)
    assert half.log10_size < space.log10_size
    with pytest.raises(ConfigError):
        make_bins(g, fm, min_width=-1)


def test_bad_arguments(conv_chain):
    g, fm = conv_chain.graph, conv_chain.fm
    for kwargs in ({"beta": 0}, {"divisor": 0}, {"mode": "flop"}, {"offset": -1},
                   {"mode": "uniform", "num_bins": 0}, {"order": {1: [0, 0, 1, 2, 3, 4, 5, 6]}}):
        with pytest.raises(ConfigError):
            make_bins(g, fm, **kwargs)


def test_blocked_groups_bin_per_block(make_conv_chain):
    torch.manual_seed(0)
    model = make_conv_chain(widths=(3, 8, 16, 12), groups=(1, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    graph = analyze(model, x)
    fm = FlopsModel(graph, model, x)
    space = make_bins(graph, fm, beta=0.5)
    blocked = [gb for gb in space.groups if gb.blocks > 1]
    assert blocked
    full = graph.width_vector({})
    for j, gb in enumerate(space.groups):
        # ε is the FLOPs of one channel in every block, divided by the blocks.
        w = full.copy()
        w[j] -= gb.blocks
        assert gb.sensitivity == pytest.approx((fm.full - fm.evaluate(w[None])[0]) / gb.blocks)
        assert gb.channels * gb.blocks == graph.groups[gb.gid].channels
    for k in np.ndindex(*[gb.num_bins for gb in space.groups]):
        spec = space.fixed_spec(np.array(k) + 1)
        graph.validate_spec(spec)                 # the same local channels in every block
    for row in bins_json(space)["groups"]:        # counted over all blocks, consistently
        assert row["bins"] == -(-row["channels"] // row["bin_size"])


def test_stage_sizes_follow_eq14(conv_chain):
    g, fm = conv_chain.graph, conv_chain.fm
    one, per1 = stage_log10_sizes(g, fm, 2.0, 1, 2.0)
    assert one == pytest.approx(make_bins(g, fm, beta=2.0).log10_size) and len(per1) == 1
    total, per = stage_log10_sizes(g, fm, 2.0, 3, 2.0)
    assert per == [pytest.approx(make_bins(g, fm, beta=b).log10_size) for b in (2.0, 1.0, 0.5)]
    assert total == pytest.approx(math.log10(sum(10 ** p for p in per)))


def test_json_document_has_exactly_the_documented_keys(conv_chain):
    doc = bins_json(make_bins(conv_chain.graph, conv_chain.fm), "chain")
    assert set(doc) == {"model", "beta", "log10_space", "groups"}
    assert all(set(row) == {"id", "channels", "sensitivity", "bin_size", "bins", "layers"}
               for row in doc["groups"])
    assert flops_per_bin(make_bins(conv_chain.graph, conv_chain.fm)).shape == (3,)


def test_l1_order_puts_the_largest_weights_first(make_conv_chain):
    torch.manual_seed(0)
    model = make_conv_chain(widths=(3, 8, 16, 12), groups=(1, 4, 1)).eval()
    with torch.no_grad():
        model.convs[0].weight[5].mul_(100)   # group of 8 in 4 blocks of 2: local channel 1
        model.convs[1].weight[6].mul_(100)   # group of 16 in 4 blocks of 4: local channel 2
        model.convs[2].weight[7].mul_(100)   # plain group of 12: channel 7
    x = torch.randn(1, 3, 16, 16)
    graph = analyze(model, x)
    fm = FlopsModel(graph, model, x)
    order = channel_order(graph, model, "l1")
    g8, g16, g12 = graph.searchable
    assert (g8.blocks, g16.blocks, g12.blocks) == (4, 4, 1)
    assert order[g8.id][0] == 1 and order[g16.id][0] == 2 and order[g12.id][0] == 7
    assert all(sorted(order[g.id]) == list(range(g.block_size)) for g in graph.searchable)
    space = make_bins(graph, fm, order=order, mode="uniform", num_bins=None)
    spec = space.fixed_spec([1, 1, 1])
    assert spec[g8.id] == [1, 3, 5, 7]                     # the same local channel in every block
    assert spec[g16.id] == [2, 6, 10, 14]
    assert spec[g12.id] == [7]
    assert channel_order(graph, model, "natural")[g12.id] == tuple(range(12))
    with pytest.raises(ConfigError):
        channel_order(graph, model, "l2")
