"""The README's "Custom layers" example: a layer fx cannot trace becomes searchable once registered."""

import pytest
import torch
from torch import nn

from cafeslim.errors import ConfigError
from cafeslim.export import slim
from cafeslim.export.verify import check_model
from cafeslim.graph import analyze
from cafeslim.ops import module_handler, register_op, registered_op, registry_snapshot, unregister_op

def _scale_group(graph):
    hits = [g for g in graph.groups if any(m.module == "1" and m.name == "scale" for m in g.members)]
    return hits[0] if hits else None


def test_readme_custom_layer_becomes_searchable_and_checks(readme_block):
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    ns: dict = {}
    with registry_snapshot():
        exec(compile(readme_block("Custom layers"), "README.md", "exec"), ns)
        net = ns["net"]
        after = analyze(net, x)
        group = _scale_group(after)
        assert group is not None and group.searchable and group.channels == 16
        report = check_model(net, x, "readme", n_specs=3)
        failed = {k: report.details.get(k) for k, ok in report.properties.items() if not ok}
        assert report.passed, failed
        for prop in ("runs", "equivalence", "flops", "onnx"):
            assert report.properties[prop], prop
    # The registry is back as it was: the layer is an opaque leaf and its channels are fixed.
    assert module_handler(net[1]) is None
    before = analyze(net, x)
    assert _scale_group(before) is None
    conv_out = next(g for g in before.groups if "0" in g.producers)
    assert not conv_out.searchable
    assert any("ChannelScale" in r for r in conv_out.reasons)


class _Gate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, c, 1, 1))
        self.num_channels = c

    def forward(self, x):
        return x * self.w if x.shape[0] > 0 else x


class _MyLinear(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i) * 0.1)
        self.bias = nn.Parameter(torch.zeros(o))

    def forward(self, x):
        return x @ self.weight.t() + self.bias if x.shape[0] > 0 else x


class _MyConv(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i, 3, 3) * 0.1)
        self.bias = nn.Parameter(torch.zeros(o))
        self.out_channels = o

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight, self.bias) if x.shape[0] > 0 else x


def test_register_variants_slim_their_layers():
    net = nn.Sequential(_MyConv(3, 8), _Gate(8), nn.Conv2d(8, 6, 1), nn.Flatten(2), nn.AdaptiveAvgPool1d(1),
                        nn.Flatten(1), _MyLinear(6, 5), nn.ReLU(), _MyLinear(5, 3))
    x = torch.randn(1, 3, 8, 8)
    with registered_op(_Gate, params=["w"], channels_attr="num_channels"), registered_op(_MyLinear, like="linear"), \
            registered_op(_MyConv, like="conv"):
        graph = analyze(net, x)
        assert len(graph.searchable) == 3
        small = slim(net, graph, graph.prefix_spec({g.id: g.channels // 2 for g in graph.searchable}))
        assert small[0].out_channels == 4 and small[1].num_channels == 4 and small[6].weight.shape == (2, 3)
        report = check_model(net, x, "variants", n_specs=2, formats=False)
        assert report.passed, {k: report.details.get(k) for k, ok in report.properties.items() if not ok}
    assert module_handler(net[0]) is None and module_handler(net[1]) is None and module_handler(net[6]) is None


def test_register_op_errors_and_unregister():
    with registry_snapshot():
        with pytest.raises(ConfigError):
            register_op(_Gate)                       # nothing said about the layer
        with pytest.raises(ConfigError):
            register_op(_Gate, like="spline")
        with pytest.raises(ConfigError):
            register_op(nn.LayerNorm, like="passthrough")   # taken by the built-in LayerNorm handler
        h = register_op(_Gate, like="passthrough")
        with pytest.raises(ConfigError):
            register_op(_Gate, params=["w"])
        assert register_op(_Gate, params=["w"], override=True) is not h
        h = register_op(_Gate, like="passthrough", override=True)
        assert module_handler(_Gate(2)) is h
        unregister_op(_Gate)
        assert module_handler(_Gate(2)) is None
        with pytest.raises(ConfigError):
            unregister_op(_Gate)
