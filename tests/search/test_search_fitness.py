"""Max-max fitness (Eq. 13): the best candidate wins, results are cached, records reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cafeslim.search import Fitness, FunctionFitness
from cafeslim.supernet import Supernet


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def batches(synthetic_batches):
    """``batches(n, seed=0)``: the shared synthetic batches, under a shorter name."""
    return synthetic_batches


@pytest.fixture
def make_fitness(small_cnn, space_of, batches):
    """``make_fitness(offset=1, **kw) -> (fitness, space, supernet, built)`` on the small CNN."""
    def make(offset=1, **kw):
        b = small_cnn()
        space = space_of(b, offset=offset)
        net = Supernet(b.model, b.graph, space)
        kw.setdefault("recal_n", 3)
        return Fitness(net, space, batches(4), batches(2, seed=1), flops_model=b.fm, **kw), space, net, b

    return make


def _accuracy(model, val):
    correct = total = 0
    with torch.inference_mode():
        for x, y in val:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def test_candidate_scores_are_those_of_the_exported_subnets(make_fitness, batches):
    fit, space, net, b = make_fitness()
    net.train()
    k = space.num_bins // 2
    res = fit(k)
    assert net.training and net.spec is None       # modes and selection are restored
    specs = fit.candidate_specs(k)
    assert len(res.candidate_top1s) == len(specs) == 3
    assert res.top1 == max(res.candidate_top1s)
    assert res.best_spec == specs[res.candidate]
    for spec, top1 in zip(specs, res.candidate_top1s):
        # export_subnet carries the statistics recalibrated for this very candidate
        assert _accuracy(net.export_subnet(spec).eval(), batches(2, seed=1)) == pytest.approx(top1)
    assert res.flops == pytest.approx(b.fm.flops(b.graph.widths_of(res.best_spec)))
    assert res.flops == pytest.approx(b.fm.flops(space.widths(k)))   # every candidate: k's widths


def test_candidates_keep_the_widths_of_the_fixed_pattern(small_cnn, space_of):
    b = small_cnn()
    space = space_of(b, beta=2.5)          # bins of 5 channels: 24 and 48 end in a smaller bin
    assert any(g.bounds[-1][1] - g.bounds[-1][0] < g.bin_size for g in space.groups)
    fit = FunctionFitness(lambda k: 0.0, space)
    fit.offset = 1
    k = space.num_bins - 1                 # the zone of every group reaches its last bin
    want = b.graph.widths_of(space.fixed_spec(k))
    cands = fit.candidate_specs(k)
    assert len(cands) > 1 and cands[0] == space.fixed_spec(k)
    assert all(b.graph.widths_of(c) == want for c in cands)
    # training (min-min) draws from the space's candidates: the same sub-networks
    assert space.candidates(k, r=1) == cands


def test_max_max_picks_the_best_candidate_and_caches(make_fitness):
    fit, space, net, _ = make_fitness()
    k = space.num_bins // 2
    specs = fit.candidate_specs(k)
    scores = {str(s): v for s, v in zip(specs, (0.2, 0.1, 0.7))}
    calls = []

    def fake_top1(spec):
        calls.append(spec)
        return scores[str(space.graph.validate_spec(spec))], 10

    fit._top1 = fake_top1
    res = fit(k)
    assert res.candidate == 2 and res.top1 == 0.7 and res.best_spec == specs[2]
    assert res.candidate_top1s == (0.2, 0.1, 0.7)
    assert fit(list(k)) is res and fit(tuple(int(v) for v in k)) is res
    assert len(calls) == 3 and fit.stats.hits == 2 and fit.stats.widths == 1
    s = fit.stats.summary()
    assert s["candidates"] == 3 and s["recal_share"] + s["eval_share"] + s["prepare_share"] == pytest.approx(1)


def test_offset_zero_scores_the_fixed_pattern_only(make_fitness):
    fit, space, _, _ = make_fitness(offset=0)
    res = fit(space.num_bins // 2)
    assert len(res.candidate_top1s) == 1 and res.best_spec == space.fixed_spec(space.num_bins // 2)


def test_cache_records_reload_with_the_same_spec(make_fitness, batches):
    fit, space, net, b = make_fitness()
    fit._top1 = lambda spec: (float(sum(len(v) for v in spec.values()) % 7) / 7, 1)
    rng = np.random.default_rng(0)
    ks = space.sample(rng, 4)
    for k in ks:
        fit(k)
    other = Fitness(net, space, batches(4), batches(2, seed=1), flops_model=b.fm)
    assert other.load_cache(fit.cache_state()) == len(fit.cache)
    for k in ks:
        a, c = fit.cached(k), other.cached(k)
        assert c is not None and c.best_spec == a.best_spec and c.top1 == a.top1 and c.flops == a.flops


def test_batches_are_read_once_and_never_beyond_the_limit(make_fitness, batches):
    data, opened, read = batches(6), [], []

    def source():
        opened.append(1)
        for b in data:
            read.append(1)
            yield b

    fit, space, _, _ = make_fitness(recal_n=3)
    fit2 = Fitness(fit.net, space, source, batches(2, seed=1), recal_n=3)
    fit2(space.num_bins // 2)
    fit2(space.num_bins // 3)
    assert len(opened) == 1 and len(read) == 3        # kept in memory after the first pass
    opened.clear(), read.clear()
    fit3 = Fitness(fit.net, space, source, batches(2, seed=1), recal_n=3, cache_mb=0)
    fit3(space.num_bins // 2)
    assert len(opened) == 3 and len(read) == 9        # streamed for each of the 3 candidates


def test_function_fitness_uses_the_fixed_pattern(small_cnn, space_of):
    b = small_cnn()
    space = space_of(b)
    fit = FunctionFitness(lambda k: float(k.sum()), space, flops_model=b.fm)
    res = fit(space.num_bins)
    assert res.top1 == float(space.num_bins.sum()) and res.flops == pytest.approx(b.fm.full)
