"""Batched candidates (vmap) compute what the sequential path computes.

Parity on a conv-BN net with a residual add, timm ``test_resnet`` and ``test_efficientnet``
(depthwise convolutions, squeeze-excitation) and ``test_vit`` (LayerNorm, attention, no BN):
min-min selection losses and the chosen candidate, BatchNorm recalibration, eval-mode outputs
and the max-max fitness. Plus: the fallback when vmap cannot run a model, the memory cap, and
that the CPU default stays sequential.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cafeslim.bins.make import make_bins
from cafeslim.errors import ConfigError
from cafeslim.flops import FlopsModel
from cafeslim.graph import analyze
from cafeslim.models import create
from cafeslim.search import Fitness
from cafeslim.supernet import MinMinConfig, Supernet, bn_modules, minmin_step, recalibrate_bn
from cafeslim.supernet.batched import candidate_outputs, chunk_size
from cafeslim.supernet.bn import recalibrate_bn_many
from cafeslim.supernet.minmin import _candidate_losses
from residual_net import Net

RTOL = 1e-5


class ItemNet(Net):
    """Reads a tensor value as a Python number: vmap cannot batch that."""

    def forward(self, x):
        out = super().forward(x)
        return out * (1.0 if float(out.abs().max()) >= 0 else 2.0)


MODELS = {"conv-bn": 16, "timm:test_resnet": 32, "timm:test_efficientnet": 32, "timm:test_vit": None}


@functools.lru_cache(maxsize=None)
def _built(name):
    torch.manual_seed(0)
    if name == "conv-bn":
        model, side, classes = Net().eval(), 16, 5
    else:
        info = create(name, num_classes=10)
        model, side, classes = info.model.eval(), MODELS[name], 10
    shape = (3, side, side) if side else tuple(info.input_size)
    graph = analyze(model, torch.randn(1, *shape), source=name)
    space = make_bins(graph, FlopsModel(graph), offset=1)
    return model, graph, space, shape, classes


def build(name, mode):
    model, graph, space, shape, classes = _built(name)
    return Supernet(copy.deepcopy(model), graph, space, batch_candidates=mode), space, shape, classes


def three_candidates(space, seed=0):
    """A width vector with at least three aligned candidates, and those candidates."""
    rng = np.random.default_rng(seed)
    for _ in range(50):
        k = space.sample(rng, 1)[0]
        cands = space.candidates(k, r=1)
        if len(cands) >= 3:
            return k, cands
    raise AssertionError("no width with three candidates")


def batches(shape, classes, n=3, size=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


def close(a, b):
    """Relative difference: largest absolute difference over the largest magnitude."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", list(MODELS))
def test_selection_losses_and_choice_match(name, one_thread):
    x, y = batches(*_built(name)[3:5], n=1, size=8)[0]
    got = {}
    for mode in ("off", "on"):
        net, space, _, _ = build(name, mode)
        net.train()
        full = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bn_modules(net.model)}
        _, cands = three_candidates(space)
        with torch.inference_mode():
            got[mode] = torch.stack(_candidate_losses(net, cands, x, y, F.cross_entropy))
        assert net.batching_error is None
        # Train-mode BN in selection: batch statistics, the full running statistics untouched.
        for n, m in bn_modules(net.model):
            assert torch.equal(full[n][0], m.running_mean) and torch.equal(full[n][1], m.running_var)
    assert close(got["on"], got["off"]) <= RTOL
    assert int(got["on"].argmin()) == int(got["off"].argmin())


@pytest.mark.parametrize("name", ["conv-bn", "timm:test_resnet", "timm:test_efficientnet"])
def test_recalibration_and_eval_outputs_match(name, one_thread):
    shape, classes = _built(name)[3:5]
    data = batches(shape, classes)
    x = data[0][0]
    stats, outs = {}, {}
    for mode in ("off", "on"):
        net, space, _, _ = build(name, mode)
        _, cands = three_candidates(space, seed=2)
        stats[mode] = recalibrate_bn_many(net, cands, data, max_batches=3)
        net.eval()
        with torch.inference_mode():
            if mode == "on":
                outs[mode] = candidate_outputs(net, [net.prepare(s) for s in cands], x,
                                               [net.bn_stats(s) for s in cands])
            else:
                outs[mode] = []
                for s in cands:
                    net.set_subnet(s)
                    outs[mode].append(net(x))
        assert net.batching_error is None
        # The one-spec function stores the same statistics as the batched pass.
        assert set(stats[mode][0]) == set(recalibrate_bn(net, cands[0], data, 3))
    for a, b in zip(stats["on"], stats["off"]):
        assert set(a) == set(b)
        for q in a:
            # Relative, except for statistics that are zero up to round-off (~1e-8).
            assert close(a[q], b[q]) <= RTOL or torch.allclose(a[q], b[q], atol=1e-6), q
    for a, b in zip(outs["on"], outs["off"]):
        # Relative to the output's scale: element-wise, a logit near zero carries the summation
        # order's round-off (7e-5 relative on test_efficientnet with this CPU's kernels).
        assert close(a, b) <= RTOL


@pytest.mark.parametrize("name", ["conv-bn", "timm:test_resnet"])
def test_fitness_matches(name, one_thread):
    shape, classes = _built(name)[3:5]
    recal, val = batches(shape, classes, n=2, seed=3), batches(shape, classes, n=2, seed=4)
    res = {}
    for mode in ("off", "on"):
        net, space, _, _ = build(name, mode)
        fit = Fitness(net, space, recal, val, recal_n=2)
        k, _ = three_candidates(space, seed=5)
        res[mode] = fit(k)
        assert fit.stats.candidates == len(res[mode].candidate_top1s) >= 3
        assert fit.stats.recal_images == 12 * fit.stats.candidates
        assert fit.stats.eval_images == 12 * fit.stats.candidates
        assert net.batching_error is None
    assert res["on"].candidate_top1s == res["off"].candidate_top1s
    assert res["on"].candidate == res["off"].candidate


def test_minmin_steps_train_the_same_weights(one_thread):
    shape, classes = _built("conv-bn")[3:5]
    data = batches(shape, classes, n=4, size=8, seed=6)
    weights = {}
    for mode in ("off", "on"):
        net, space, _, _ = build("conv-bn", mode)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        rng = np.random.default_rng(0)
        chosen = [minmin_step(net, space, x, y, F.cross_entropy, opt, MinMinConfig(offset=1), rng,
                              progress=0.5).chosen for x, y in data]
        weights[mode] = (chosen, [p.detach().clone() for p in net.parameters()])
    assert weights["on"][0] == weights["off"][0]
    for a, b in zip(weights["on"][1], weights["off"][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_unbatchable_model_falls_back(one_thread):
    model, graph, space, shape, classes = _built("conv-bn")
    net = Supernet(ItemNet().eval(), graph, space, batch_candidates="on").train()
    ref = Supernet(copy.deepcopy(net.model), graph, space, batch_candidates="off").train()
    x, y = batches(shape, classes, n=1, size=8)[0]
    _, cands = three_candidates(space)
    with torch.inference_mode():
        a = torch.stack(_candidate_losses(net, cands, x, y, F.cross_entropy))
        b = torch.stack(_candidate_losses(ref, cands, x, y, F.cross_entropy))
    assert net.batching_error  # tried once, remembered why not
    assert chunk_size(net, 3, 8) == 1
    assert torch.equal(a, b)


def test_memory_cap_chunks_and_cpu_default(one_thread):
    net, space, shape, classes = build("conv-bn", "on")
    assert chunk_size(net, 3, 8) == 3
    net.max_batched_images = 16
    assert chunk_size(net, 3, 8) == 2     # two candidates of 8 images per call
    net.max_batched_images = 15
    assert chunk_size(net, 3, 8) == 1     # not even two: sequential
    net.max_batched_images = 16
    ref, _, _, _ = build("conv-bn", "off")
    x, y = batches(shape, classes, n=1, size=8)[0]
    _, cands = three_candidates(space)
    net.train(), ref.train()
    with torch.inference_mode():
        a = torch.stack(_candidate_losses(net, cands, x, y, F.cross_entropy))
        b = torch.stack(_candidate_losses(ref, cands, x, y, F.cross_entropy))
    assert close(a, b) <= RTOL
    with pytest.raises(ConfigError, match="batch_candidates"):
        build("conv-bn", "always")


def test_batch_size_for_the_cap_is_read_without_consuming():
    from torch.utils.data import DataLoader, TensorDataset

    from cafeslim.search.supernet_fitness import _Replay
    from cafeslim.supernet.bn import _batch_size

    loader = DataLoader(TensorDataset(torch.randn(20, 3), torch.zeros(20)), batch_size=6)
    replay = _Replay(loader, 2, 1 << 20)
    assert _batch_size(loader) == _batch_size(replay) == 6
    assert _batch_size([(torch.randn(5, 3), 0)]) == 5
    assert replay._kept is None  # nothing was read


def test_cpu_probe_measures_both_paths_then_keeps_the_faster(one_thread):
    from cafeslim.supernet.batched import PROBES, record_time

    default, _, _, _ = build("conv-bn", "auto")
    assert chunk_size(default, 3, 8) == 1  # measured slower on this CPU: sequential by default
    auto, _, _, _ = build("conv-bn", "probe")
    picks = []
    for _ in range(2 * PROBES):
        batched = chunk_size(auto, 3, 8) > 1
        picks.append(batched)
        record_time(auto, "select", 8, batched, 1.0 if batched else 2.0)
    assert picks == [False, True] * PROBES  # sequential first, then alternating
    assert chunk_size(auto, 3, 8) == 3     # batched measured faster: kept
    assert chunk_size(auto, 3, 4) == 1     # another size is probed apart, sequential first
    for _ in range(2 * PROBES):
        batched = chunk_size(auto, 3, 4, "recal") > 1
        record_time(auto, "recal", 4, batched, 2.0 if batched else 1.0)
    assert chunk_size(auto, 3, 4, "recal") == 1  # sequential measured faster: kept
