"""The supernet runs exactly the sub-network that export produces ("One currency").

Eval-mode outputs with IndexSpec s equal those of ``slim(model, graph, s)`` with the same BN
statistics; after ``recalibrate_bn`` they equal the exported model with the recalibrated
statistics; training a sub-network moves only its slices and never the full BN buffers.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cafeslim.export import output_scale, slim
from cafeslim.export.verify import random_spec
from cafeslim.graph import analyze
from cafeslim.models import create
from cafeslim.supernet import Supernet, bn_modules, recalibrate_bn
from cafeslim.supernet.supernet import spec_key

RTOL = 1e-5
MODELS = {
    # name -> input side (None: the model's own, for models with a fixed token grid)
    "timm:test_resnet": 64,
    "timm:test_efficientnet": 64,
    "timm:test_vit": None,
    "timm:test_convnext": 64,
    "tv:resnet18": 64,
}


def _build(name):
    """A fresh copy of the model (tests modify weights and grads), its graph and an input."""
    model, graph, x = _build_once(name)
    return copy.deepcopy(model), graph, x


@functools.lru_cache(maxsize=None)
def _build_once(name):
    torch.manual_seed(0)
    info = create(name, num_classes=10 if name.startswith("tv:") else None)
    side = MODELS[name]
    shape = info.input_size if side is None else (info.input_size[0], side, side)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    model = info.model.eval()
    _randomise_bn(model)
    return model, analyze(model, x, source=name), x


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so that using the wrong ones shows."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, m in bn_modules(model):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    return _build(request.param)


def _rel(a, b):
    return (a - b).abs().max().item() / max(output_scale(b), 1e-12)


def test_eval_parity_with_slim(built):
    model, graph, x = built
    net = Supernet(model, graph).eval()
    rng = np.random.default_rng(0)
    specs = [random_spec(graph, rng, prefix=p) for p in (True, False, False)]
    specs.append(random_spec(graph, rng, prefix=False, low=0.05))
    with torch.no_grad():
        for spec in specs:
            net.set_subnet(spec)
            got = net(x)
            want = slim(model, graph, spec).eval()(x)
            assert got.shape == want.shape
            assert _rel(got, want) <= RTOL
        net.set_subnet(None)
        assert torch.equal(net(x), model(x))


def test_recalibrated_stats_match_export(built):
    model, graph, x = built
    before = copy.deepcopy(model.state_dict())
    net = Supernet(model, graph).eval()
    spec = random_spec(graph, np.random.default_rng(3), prefix=False)
    batches = [(torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(i)), None)
               for i in range(3)]
    stats = recalibrate_bn(net, spec, batches)
    assert len(stats) == 3 * len(bn_modules(model))
    net.set_subnet(spec)
    small = net.export_subnet(spec).eval()
    with torch.no_grad():
        assert _rel(net(x), small(x)) <= RTOL
    # The supernet's own weights and buffers did not move.
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    if bn_modules(model):
        # ... and the stored statistics are not the sliced full ones.
        plain = slim(model, graph, spec).eval()
        with torch.no_grad():
            assert _rel(net(x), plain(x)) > 1e-4


def test_recalibration_is_a_cumulative_average():
    """Stats equal a hand-made recalibration of the exported model (reset, momentum None)."""
    model, graph, x = _build("tv:resnet18")
    net = Supernet(model, graph)
    spec = random_spec(graph, np.random.default_rng(4), prefix=False)
    batches = [torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(i)) for i in range(5)]
    stats = recalibrate_bn(net, spec, iter(batches), max_batches=4)
    ref = slim(model, graph, spec).eval()
    for _, m in bn_modules(ref):
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for b in batches[:4]:
            ref(b)
    for name, buf in ref.named_buffers():
        if name in stats:
            assert torch.allclose(stats[name], buf, rtol=1e-5, atol=1e-6), name
    assert int(stats["bn1.num_batches_tracked"]) == 4
    # The full model too (spec None): stored, used in eval, exported.
    full = recalibrate_bn(net, None, batches, max_batches=2)
    net.eval().set_subnet(None)
    with torch.no_grad():
        assert torch.equal(net(x), net.export_subnet(None).eval()(x))
        assert not torch.equal(net(x), model(x))
    assert int(full["bn1.num_batches_tracked"]) == 2


def test_training_forward_and_grads_match_slim():
    """Train mode: batch statistics, same outputs and gradients as the slim model; only the
    kept slices get gradient; full BN buffers untouched."""
    model, graph, x = _build("tv:resnet18")
    spec = random_spec(graph, np.random.default_rng(5), prefix=False)
    small = slim(model, graph, spec).train()
    net = Supernet(model, graph).train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    net.set_subnet(spec)
    out = net(x)
    ref = small(x)
    assert _rel(out, ref) <= RTOL
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    F.cross_entropy(ref, torch.tensor([1, 2])).backward()
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), f"{k} leaked from a sub-network's training forward"
    key = net.prepare(spec)
    prep = net._prepared[key]
    sliced_params = dict(small.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name not in prep.indices:
            assert torch.allclose(p.grad, sliced_params[name].grad, atol=1e-6), name
            continue
        kept = p.grad
        for axis, idx in prep.indices[name]:
            kept = kept.index_select(axis, idx)
        assert torch.allclose(kept, sliced_params[name].grad, atol=1e-6), name
        # Everything outside the kept slices is exactly zero.
        mask = torch.ones_like(kept, dtype=torch.bool)
        for axis, idx in reversed(prep.indices[name]):
            shape = list(mask.shape)
            shape[axis] = p.shape[axis]
            mask = torch.zeros(shape, dtype=torch.bool).index_copy(axis, idx, mask)
        assert (p.grad[~mask] == 0).all(), name


def test_state_dict_is_the_models():
    model, graph, x = _build("timm:test_resnet")
    net = Supernet(model, graph)
    sd = net.state_dict()
    assert list(sd) == list(model.state_dict())
    # A plain checkpoint loads into the supernet and into a DDP-style wrapper's prefix.
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    net.load_state_dict(other.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    wrapper = nn.ModuleDict({"module": net})
    wsd = wrapper.state_dict()
    assert set(wsd) == {f"module.{k}" for k in sd}
    wrapper.load_state_dict(wsd)
    # The prefixed form (older checkpoints, or someone's net.model.state_dict() with prefix) loads too.
    net.load_state_dict({f"model.{k}": v for k, v in sd.items()})
    with pytest.raises(RuntimeError):
        net.load_state_dict({"nonsense.weight": torch.zeros(1)})


def test_spec_cache_and_keys():
    model, graph, x = _build("timm:test_efficientnet")
    net = Supernet(model, graph, cache_size=2).eval()
    rng = np.random.default_rng(6)
    specs = [random_spec(graph, rng, prefix=False) for _ in range(4)]
    for s in specs:
        net.set_subnet(s)
    assert len(net._prepared) == 2 and net.key == spec_key(graph, specs[-1])
    assert net.set_subnet(graph.prefix_spec(graph.full_widths())) == ()
    assert net.spec is None
