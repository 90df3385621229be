"""``check`` can fail: break one thing at a time and watch ``check_model`` report FAILED.

Each mutation edits the ChannelGraph that analysis produced (through a wrapper around
``analyze`` as ``check_model`` sees it), or wraps ``slim``; the package source is untouched.
Every mutation is a mistake analysis or gathering could plausibly make:

* concat offset: the segments of a channel concatenation in reversed order;
* split sizes: the second half of a ``chunk`` one channel off;
* flatten mapping: flatten before Linear mapped channel-last (channel c -> columns c + C*j)
  instead of channel c -> its H*W consecutive columns;
* grouped conv: a grouped conv's input read as a dense conv's (block pattern lost);
* kept order: a producer's kept channels gathered in reversed order (its consumers not).

Tiny hand-built models with each structure run in the default suite, the same mutations on
real torchvision models are slow-marked. Each test also runs the unmutated model, which
must pass, so a failure is the mutation's doing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torchvision
from torch import nn

import cafeslim.export.verify as verify
from cafeslim.export.verify import FAILED, PASSED, check_model
from cafeslim.graph.channel_graph import ChannelGraph, Member


# --------------------------------------------------------------------------- tiny models

class CatNet(nn.Module):
    """Two branches of different widths concatenated, then a 1x1 conv reads the concat."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.c, self.fc = nn.Conv2d(10, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))


class ChunkNet(nn.Module):
    """A conv's output chunked in two halves that feed two branches (res2net/ghost-style)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.a, self.b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.c, self.fc = nn.Conv2d(12, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        p, q = torch.relu(self.stem(x)).chunk(2, 1)
        y = torch.cat([torch.relu(self.a(p)), torch.relu(self.b(q))], 1)
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))


def flat_net():
    """AlexNet/VGG-style: features pooled to 2x2, flattened into a Linear."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(24, 7), nn.ReLU(), nn.Linear(7, 5))


class GroupedNet(nn.Module):
    """RegNet/ResNeXt-style bottleneck around a grouped 3x3 conv."""

    def __init__(self):
        super().__init__()
        self.stem, self.a = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 1)
        self.g = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.c, self.fc = nn.Conv2d(12, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.g(torch.relu(self.a(x))))
        return self.fc(torch.relu(x + self.c(y)).mean((2, 3)))


# --------------------------------------------------------------------------- mutations

def _replace(graph: ChannelGraph, gid: int, old: Member, new: List[Member]) -> None:
    members = graph.groups[gid].members
    i = members.index(old)
    members[i:i + 1] = new


def _slots(graph: ChannelGraph, role: str) -> Dict[Tuple[str, int], List[Tuple[int, Member]]]:
    slots: Dict[Tuple[str, int], List[Tuple[int, Member]]] = {}
    for g in graph.groups:
        for m in g.members:
            if m.role == role:
                slots.setdefault((m.qualname, m.axis), []).append((g.id, m))
    return slots


def reverse_concat(graph: ChannelGraph) -> int:
    """Every consumer of a concatenation reads its segments in reversed order."""
    n = 0
    for members in _slots(graph, "in").values():
        if len({m.offset for _, m in members}) < 2 or any(m.blocks > 1 for _, m in members):
            continue
        end = max(m.offset + graph.groups[g].channels * m.inner for g, m in members)
        for gid, m in members:
            size = graph.groups[gid].channels * m.inner
            _replace(graph, gid, m, [dataclasses.replace(m, offset=end - m.offset - size)])
        n += 1
    return n


def shift_split(graph: ChannelGraph) -> int:
    """A chunked producer's second half starts one channel early (split sizes [c-1, c+1])."""
    n = 0
    for g in graph.searchable:
        for m in list(g.members):
            if m.role == "out" and m.offset > 0:
                _replace(graph, g.id, m, [dataclasses.replace(m, offset=m.offset - 1)])
                n += 1
    return n


def channel_last_flatten(graph: ChannelGraph) -> int:
    """Flatten -> Linear mapped as if channels were last: channel c -> columns c + C*j."""
    n = 0
    for g in graph.searchable:
        for m in list(g.members):
            if m.role == "in" and m.inner > 1:
                _replace(graph, g.id, m, [dataclasses.replace(m, offset=m.offset + j * g.channels, inner=1)
                                          for j in range(m.inner)])
                n += 1
    return n


def dense_grouped_conv(graph: ChannelGraph) -> int:
    """A grouped conv's input axis read like a dense conv's (the block pattern forgotten)."""
    n = 0
    for g in graph.searchable:
        for m in list(g.members):
            if m.blocks > 1:
                _replace(graph, g.id, m, [dataclasses.replace(m, blocks=1)])
                n += 1
    return n


def mutate_analysis(monkeypatch, mutation: Callable[[ChannelGraph], int]) -> List[int]:
    """Make ``check_model`` see the analysed graph with ``mutation`` applied."""
    real, applied = verify.analyze, []

    def analyze(*args, **kwargs):
        graph = real(*args, **kwargs)
        applied.append(mutation(graph))
        return graph

    monkeypatch.setattr(verify, "analyze", analyze)
    return applied


def mutate_kept_order(monkeypatch) -> List[int]:
    """Gather the kept output channels of one producer in reversed order."""
    real, applied = verify.slim, []

    def slim(model, graph, spec):
        small = real(model, graph, spec)
        tensors = dict(small.named_parameters())
        for g in graph.searchable:
            kept = len(spec.get(g.id, range(g.channels)))
            outs = [m for m in g.members if m.role == "out" and m.blocks == 1 and m.inner == 1]
            if kept < 2 or not outs:
                continue
            module = outs[0].module
            with torch.no_grad():
                for m in outs:
                    if m.module == module:
                        t = tensors[m.qualname]
                        idx = torch.arange(m.offset, m.offset + kept)
                        t.index_copy_(m.axis, idx, t.index_select(m.axis, idx.flip(0)))
            applied.append(g.id)
            break
        return small

    monkeypatch.setattr(verify, "slim", slim)
    return applied


# --------------------------------------------------------------------------- tests

def _x(size=16):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _check(model, x, n_specs=2):
    return check_model(model, x, "mutant", n_specs=n_specs, formats=False)


def _assert_failed(report, prop):
    assert report.status == FAILED, report.details
    assert report.statuses[prop] == FAILED, report.details


# the property that fails: a shape-preserving mistake computes a different function, the
# dense reading of a grouped conv's weight asks for input columns it does not have
TINY = [
    ("concat offset", CatNet, reverse_concat, "equivalence"),
    ("split sizes", ChunkNet, shift_split, "equivalence"),
    ("flatten mapping", flat_net, channel_last_flatten, "equivalence"),
    ("grouped conv blocks", GroupedNet, dense_grouped_conv, "runs"),
]


@pytest.mark.parametrize("what,make,mutation,prop", TINY, ids=[t[0] for t in TINY])
def test_a_broken_graph_fails_check(monkeypatch, what, make, mutation, prop):
    torch.manual_seed(0)
    model, x = make().eval(), _x()
    assert _check(model, x).status == PASSED
    applied = mutate_analysis(monkeypatch, mutation)
    report = _check(model, x)
    assert applied and all(applied), f"the {what} mutation found nothing to break"
    _assert_failed(report, prop)


def test_a_reversed_kept_order_fails_check(monkeypatch):
    torch.manual_seed(0)
    model, x = CatNet().eval(), _x()
    applied = mutate_kept_order(monkeypatch)
    report = _check(model, x)
    assert applied
    assert report.statuses["equivalence"] == FAILED and report.status == FAILED


def test_the_flatten_mutation_keeps_shapes():
    # the channel-last mapping removes as many columns as the right one: only values differ
    torch.manual_seed(0)
    model, x = flat_net().eval(), _x()
    from cafeslim.export.slim import slim
    from cafeslim.graph import analyze

    graph = analyze(model, x)
    spec = {g.id: list(range(0, g.channels, 2)) for g in graph.searchable}
    good = slim(model, graph, spec)
    assert channel_last_flatten(graph) == 1
    bad = slim(model, graph, spec)
    assert good[7].weight.shape == bad[7].weight.shape
    assert not torch.equal(good[7].weight, bad[7].weight)


REAL = [
    ("concat offset", "googlenet", 224, reverse_concat, "equivalence"),
    ("flatten mapping", "alexnet", 64, channel_last_flatten, "equivalence"),
    ("grouped conv blocks", "regnet_x_400mf", 64, dense_grouped_conv, "runs"),
]


@pytest.mark.slow
@pytest.mark.parametrize("what,name,size,mutation,prop", REAL, ids=[t[1] for t in REAL])
def test_a_broken_graph_fails_check_on_a_zoo_model(monkeypatch, what, name, size, mutation, prop):
    model = torchvision.models.get_model(name).eval()
    applied = mutate_analysis(monkeypatch, mutation)
    report = _check(model, _x(size), n_specs=1)
    assert applied and all(applied), f"the {what} mutation found nothing to break"
    _assert_failed(report, prop)


@pytest.mark.slow
def test_a_reversed_kept_order_fails_check_on_a_zoo_model(monkeypatch):
    applied = mutate_kept_order(monkeypatch)
    report = _check(torchvision.models.get_model("resnet18").eval(), _x(64), n_specs=1)
    assert applied and report.statuses["equivalence"] == FAILED
