"""Small hand-made models and synthetic data for the search tests (analysis takes < 1 s)."""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Tuple

import torch
from torch import nn

from cafeslim.bins import make_bins
from cafeslim.flops import FlopsModel
from cafeslim.graph import ChannelGraph, analyze


class SmallCNN(nn.Module):
    """conv-BN-ReLU blocks (one grouped, one residual) and a linear head."""

    def __init__(self, widths=(24, 32, 48, 48), classes: int = 4, groups: int = 1):
        super().__init__()
        c0, c1, c2, c3 = widths
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(c0, c1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c2),
                                nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c3))
        self.b4 = nn.Sequential(nn.Conv2d(c3, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3))
        self.fc = nn.Linear(c3, classes)

    def forward(self, x):
        x = self.b2(self.b1(self.stem(x)))
        x = torch.relu(self.b3(x))
        x = torch.relu(x + self.b4(x))
        return self.fc(x.mean((2, 3)))


class Built(NamedTuple):
    model: nn.Module
    x: torch.Tensor
    graph: ChannelGraph
    fm: FlopsModel


@functools.lru_cache(maxsize=None)
def built(groups: int = 1, side: int = 16) -> Built:
    torch.manual_seed(0)
    model = SmallCNN(groups=groups).eval()
    x = torch.randn(1, 3, side, side)
    graph = analyze(model, x, source="small-cnn")
    return Built(model, x, graph, FlopsModel(graph, model, x))


def space_of(b: Built, beta: float = 1.0, offset: int = 1, **kw):
    return make_bins(b.graph, b.fm, beta=beta, offset=offset, **kw)


def batches(n: int, size: int = 16, side: int = 16, classes: int = 4, seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic ``(images, labels)`` batches whose labels depend on the mean colour."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 3, side, side, generator=g)
        y = (x.mean((2, 3)) @ torch.tensor([1.0, -1.0, 0.5]) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
        out.append((x, y % classes))
    return out
