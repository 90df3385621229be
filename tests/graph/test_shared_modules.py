"""A module called more than once: one weight, so one channel layout for all its calls.

timm's CoaT shares one Mlp across the three scales of its parallel blocks
(``self.mlp2 = self.mlp3 = self.mlp4``). Each call of ``fc1`` used to create its own group
of hidden channels, all three holding the same rows of ``fc1.weight``: ``slim`` can cut a
tensor one way only (it kept the intersection), while the search and the FLOPs model
treated the three widths as independent (coat_tiny's FLOPs 14 % off fvcore).
"""

import torch
import torch.nn.functional as F
from torch import nn

from cafeslim.export.verify import PASSED, check_model
from cafeslim.graph import analyze


class SharedMlp(nn.Module):
    """Two streams of different resolutions, each through the same MLP and its own head."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.head_a, self.head_b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        ya = self.a(x)
        yb = self.b(F.avg_pool2d(x, 2))
        return self.head_a(ya + self.mlp(ya)).mean((2, 3)) + self.head_b(yb + self.mlp(yb)).mean((2, 3))


def _net_and_input():
    torch.manual_seed(0)
    return SharedMlp().eval(), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_each_tensor_axis_of_a_shared_module_is_in_one_group():
    net, x = _net_and_input()
    graph = analyze(net, x)
    owner = {}
    for g in graph.groups:
        for m in g.members:
            slot = (m.qualname, m.axis, m.offset)
            assert owner.setdefault(slot, g.id) == g.id, f"{slot} in groups {owner[slot]} and {g.id}"
    by_producer = {p: g for g in graph.groups for p in g.producers}
    # both streams feed mlp.0, so they are one width; the hidden channels are one more
    assert by_producer["a"] is by_producer["b"]
    assert by_producer["a"].searchable and by_producer["mlp.0"].searchable
    assert len(graph.searchable) == 2


def test_check_passes_on_a_shared_module():
    net, x = _net_and_input()
    report = check_model(net, x, "shared-mlp", n_specs=2, formats=False)
    for prop in ("runs", "equivalence", "flops"):
        assert report.statuses[prop] == PASSED, (prop, report.details[prop])


def test_coat_tiny_flops_model_matches_fvcore_on_a_slimmed_spec():
    import numpy as np

    from cafeslim.export.verify import random_spec, slim
    from cafeslim.flops import FlopsModel, count_flops
    from cafeslim.models import create

    torch.manual_seed(0)
    info = create("timm:coat_tiny")
    x, model = info.example_input(), info.model.eval()
    graph = analyze(model, x)
    fm = FlopsModel(graph, model, x)
    spec = random_spec(graph, np.random.default_rng(0), prefix=False)
    measured = count_flops(slim(model, graph, spec), x)
    assert abs(fm.flops(graph.widths_of(spec)) - measured) <= 1e-3 * measured
