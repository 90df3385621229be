"""Tracing details that torchvision's video and detection models need."""

import torch
import torch.fx
from torch import nn

from cafeslim.graph import analyze
from cafeslim.graph.trace import trace


def fill_first(sizes, x):
    sizes[0] = x.shape[1]  # fills its list argument in place, as video Swin's helper does
    return sizes


torch.fx.wrap("fill_first")


class Filler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        sizes = fill_first([0, 0], x)
        return self.conv(x) * sizes[1]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 5, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = torch.relu(self.body(x))
        return {"out": self.a(y), "feat": self.b(y)}


def test_wrapped_function_may_fill_a_list_argument():
    traced = trace(Filler().eval(), torch.randn(1, 3, 8, 8))
    assert any(n.op == "call_function" and n.target is fill_first for n in traced.gm.graph.nodes)


def test_dict_outputs_are_fixed_with_the_given_reason():
    graph = analyze(TwoHeads(), torch.randn(1, 3, 8, 8), output_reason="head contract")
    by_producer = {p: g for g in graph.groups for p in g.producers}
    assert not by_producer["a"].searchable and "head contract" in by_producer["a"].reasons
    assert not by_producer["b"].searchable
    assert by_producer["body"].searchable  # read by both heads, fixed by neither output
