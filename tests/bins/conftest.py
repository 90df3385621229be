"""Shared, cached model analyses for the bins tests (each analysis takes a second or more)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import pytest
import torch
from torch import nn

from cafeslim.flops import FlopsModel
from cafeslim.graph import ChannelGraph, analyze


class Analysed(NamedTuple):
    model: nn.Module
    x: torch.Tensor
    graph: ChannelGraph
    fm: FlopsModel


@functools.lru_cache(maxsize=None)
def analysed(name: str, with_model_flops: bool = False) -> Analysed:
    """Randomly initialised model by cafeslim name, its graph and FLOPs model (cached)."""
    from cafeslim.models import create

    torch.manual_seed(0)
    info = create(name)
    x = info.example_input()
    graph = analyze(info.model, x, source=info.name)
    fm = FlopsModel(graph, info.model, x) if with_model_flops else FlopsModel(graph)
    return Analysed(info.model, x, graph, fm)


class ConvChain(nn.Module):
    """A plain chain of convolutions (no BN, no residual): the setting of Eq. 6-7."""

    def __init__(self, widths=(3, 8, 16, 12), kernels=(3, 3, 1), strides=(1, 2, 1), groups=(1, 1, 1)):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], kernels[i], stride=strides[i],
                      padding=kernels[i] // 2, groups=groups[i], bias=False)
            for i in range(len(kernels)))
        self.fc = nn.Linear(widths[-1], 5)

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="session")
def conv_chain():
    torch.manual_seed(0)
    model = ConvChain().eval()
    x = torch.randn(1, 3, 16, 16)
    graph = analyze(model, x, source="chain")
    return Analysed(model, x, graph, FlopsModel(graph, model, x))
