"""Min-min training step (Eq. 11-12): argmin selection, costs, λ, sandwich, DDP agreement."""

from __future__ import annotations

import functools
import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cafeslim.bins.space import GroupBins, SearchSpace
from cafeslim.graph import analyze
from cafeslim.errors import ConfigError
from cafeslim.supernet import MinMinConfig, Supernet, minmin_step, step_candidates
from cafeslim.supernet.supernet import spec_key
from residual_net import Net


def equal_space(graph, bins=4):
    """A SearchSpace with ``bins`` equal bins per searchable group (no make_bins needed)."""
    groups = []
    for g in graph.searchable:
        size = g.block_size
        step = -(-size // bins)
        bounds = tuple((s, min(s + step, size)) for s in range(0, size, step))
        groups.append(GroupBins(g.id, size, g.blocks, 1.0, step, bounds))
    return SearchSpace(graph, groups)


@functools.lru_cache(maxsize=None)
def _graph():
    return analyze(Net().eval(), torch.randn(2, 3, 16, 16))  # depends on the structure only


def setup(seed=0):
    torch.manual_seed(seed)
    model = Net().eval()
    graph = _graph()
    space = equal_space(graph)
    net = Supernet(model, graph, space).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(seed))
    return net, space, opt, x, y


class Recorder:
    """Counts the model's forwards, split into gradient ones (training) and selection ones."""

    def __init__(self, net):
        self.net = net
        self.calls = []
        net.model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls.append((torch.is_grad_enabled(), self.net.key, inputs[0].shape[0]))

    @property
    def trained(self):
        return [c for c in self.calls if c[0]]

    @property
    def selected(self):
        return [c for c in self.calls if not c[0]]


def fake_loss(net, favourite):
    """A deterministic loss that depends only on which candidate runs: lowest for ``favourite``."""
    def loss(out, target):
        key = net.key
        bonus = 0.0 if key == favourite() else 1.0 + (hash(key) % 7) / 10
        return out.float().mean() * 0 + bonus + F.cross_entropy(out, target) * 1e-3
    return loss


def test_picks_the_argmin_and_trains_only_it():
    net, space, opt, x, y = setup()
    rec = Recorder(net)
    target = {}

    def favourite():
        return target.get("key")

    loss = fake_loss(net, favourite)
    for step in range(6):
        # minmin_step draws the widths first from its rng: the same seed gives the same k.
        k = space.sample(np.random.default_rng(100 + step), 1)[0]
        cands = step_candidates(space, k, MinMinConfig(offset=1), np.random.default_rng(0))
        want = step % len(cands)
        target["key"] = spec_key(space.graph, cands[want])
        rec.calls.clear()
        stats = minmin_step(net, space, x, y, loss, opt, MinMinConfig(offset=1),
                            np.random.default_rng(100 + step), progress=0.5)
        assert stats.widths == tuple(int(v) for v in k)
        assert stats.n_candidates == len(cands)
        if len(cands) > 1:
            assert stats.chosen == want
            assert int(np.argmin(stats.candidate_losses)) == want
            assert len(rec.selected) == len(cands)
        assert [c[1] for c in rec.trained] == [target["key"]]
        assert rec.trained[0][2] == x.shape[0]
    assert net.key == ()  # the previous selection (the full model) is back


def test_offset_zero_is_one_forward_and_backward():
    net, space, opt, x, y = setup()
    rec = Recorder(net)
    backwards = []
    net.model.conv1.weight.register_hook(lambda g: backwards.append(1))
    before = net.model.conv1.weight.detach().clone()
    stats = minmin_step(net, space, x, y, F.cross_entropy, opt, MinMinConfig(offset=0),
                        np.random.default_rng(0), progress=0.5)
    assert len(rec.calls) == 1 and rec.calls[0][0]
    assert len(backwards) == 1
    assert stats.n_candidates == 1 and stats.chosen == 0 and stats.candidate_losses == ()
    assert not torch.equal(before, net.model.conv1.weight)


def test_select_batch_uses_a_sub_batch():
    net, space, opt, x, y = setup()
    rec = Recorder(net)
    for seed in range(4):
        rec.calls.clear()
        stats = minmin_step(net, space, x, y, F.cross_entropy, opt, MinMinConfig(select_batch=0.25),
                            np.random.default_rng(seed), progress=0.0)
        if stats.n_candidates > 1:
            break
    assert stats.n_candidates > 1
    assert {c[2] for c in rec.selected} == {2}
    assert [c[2] for c in rec.trained] == [8]


def test_minmin_start_picks_at_random_without_selection():
    net, space, opt, x, y = setup()
    rec = Recorder(net)
    cfg = MinMinConfig(minmin_start=0.3)
    chosen = set()
    for seed in range(12):
        rec.calls.clear()
        stats = minmin_step(net, space, x, y, F.cross_entropy, opt, cfg, np.random.default_rng(seed),
                            progress=0.1)
        assert not rec.selected and len(rec.trained) == 1 and stats.candidate_losses == ()
        chosen.add(stats.chosen)
    assert len(chosen) > 1  # not always the fixed pattern
    rec.calls.clear()
    stats = minmin_step(net, space, x, y, F.cross_entropy, opt, cfg, np.random.default_rng(0), progress=0.3)
    assert len(rec.selected) == stats.n_candidates > 1


def test_sandwich_trains_largest_smallest_and_sampled():
    net, space, opt, x, y = setup()
    rec = Recorder(net)
    stats = minmin_step(net, space, x, y, F.cross_entropy, opt, MinMinConfig(sandwich=True),
                        np.random.default_rng(3), progress=0.5)
    keys = [c[1] for c in rec.trained]
    assert len(keys) == 3 and keys[0] == ()
    smallest = spec_key(space.graph, space.fixed_spec(space.min_bins))
    small_keys = {spec_key(space.graph, s) for s in space.candidates(space.min_bins)}
    assert keys[1] in small_keys and len(keys[1]) == len(smallest)
    assert len(stats.sandwich_losses) == 2
    # Running statistics of the full model moved only through the full-width forward.
    assert int(net.model.bn1.num_batches_tracked) == 1


def test_low_precision_selection():
    net, space, opt, x, y = setup()
    seen = []
    net.model.fc.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
    stats = minmin_step(net, space, x, y, F.cross_entropy, opt, MinMinConfig(select_dtype="bfloat16"),
                        np.random.default_rng(1), progress=0.5)
    assert stats.n_candidates > 1 and len(stats.candidate_losses) == stats.n_candidates
    assert {d for g, d in seen if not g} == {torch.bfloat16}
    assert [d for g, d in seen if g] == [torch.float32]  # training stays in fp32


def test_config_validation():
    with pytest.raises(ConfigError, match=r"select_batch must be in \(0, 1\]"):
        MinMinConfig(select_batch=0.0)
    with pytest.raises(ConfigError, match="offset must be non-negative"):
        MinMinConfig(offset=-1)
    with pytest.raises(ConfigError, match="select_dtype must be one of"):
        MinMinConfig(select_dtype="int8")


# ----------------------------------------------------------------------------- DDP (gloo, CPU)

def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net, space, _, _, _ = setup(seed=0)  # same initial weights on every rank
        ddp = DDP(net)  # no find_unused_parameters: every parameter reaches every sub-network's loss
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        rng = np.random.default_rng(7)  # identical on every rank
        gen = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
        chosen = []
        for step in range(3):
            x = torch.randn(8, 3, 16, 16, generator=gen)
            y = torch.randint(0, 5, (8,), generator=gen)
            s = minmin_step(ddp, space, x, y, F.cross_entropy, opt, MinMinConfig(sandwich=step == 2),
                            rng, progress=0.5)
            chosen.append((s.widths, s.chosen, s.candidate_losses))
        # Parameters only: BN running statistics are updated locally by the full-width forward
        # of the sandwich and only broadcast by DDP at a later forward (as in any DDP run).
        params = {k: v.detach().clone() for k, v in net.model.named_parameters()}
        torch.save({"chosen": chosen, "params": params}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~15-25 s; tests/supernet/test_ddp.py covers the same through the training loop
@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP")
def test_ddp_ranks_agree(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["chosen"] == r1["chosen"]
    assert any(len(c[2]) > 1 for c in r0["chosen"])  # a real selection happened
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k


def test_a_sampler_draws_the_width_with_the_step_rng():
    from cafeslim.bins.sampling import WidthSampler
    from cafeslim.flops import FlopsModel

    net, space, opt, x, y = setup()
    fm = FlopsModel(net.graph)
    sampler = WidthSampler(space, fm, [0.5 * fm.full], mode="budget", seed=0)
    for step in range(3):
        want = sampler.sample(np.random.default_rng(step))
        stats = minmin_step(net, space, x, y, F.cross_entropy, opt, MinMinConfig(offset=1),
                            np.random.default_rng(step), 0.0, sampler=sampler)
        assert stats.widths == tuple(int(v) for v in want)
        assert 0.97 * 0.5 <= sampler.flops_fraction([want])[0] <= 0.5


def test_budget_sampling_without_a_sampler_is_an_error():
    net, space, opt, x, y = setup()
    with pytest.raises(ConfigError, match="needs a sampler"):
        minmin_step(net, space, x, y, F.cross_entropy, opt, MinMinConfig(sampling="budget"),
                    np.random.default_rng(0), 0.0)
