"""Registry lookups: MRO-aware module types, function names, kinds, the shared detectors."""

import pytest
import torch
from torch import nn

from cafeslim.flops import FlopsModel
from cafeslim.graph import analyze
from cafeslim.graph.channel_graph import OpRecord, TensorDesc
from cafeslim.ops import (OpHandler, OpKind, function_handler, is_bn_like, is_leaf, is_std_conv, kind_handler,
                          module_handler, op_cost, register_op, registry_snapshot, split_kind)


def test_subclasses_find_their_base_handler():
    timm_layers = pytest.importorskip("timm.layers")

    class MyConv(nn.Conv2d):
        pass
    assert module_handler(MyConv(3, 4, 1)) is module_handler(nn.Conv2d(3, 4, 1))
    assert module_handler(timm_layers.BatchNormAct2d(4)).name == "BatchNormHandler"
    assert module_handler(timm_layers.LayerNorm2d(4)).name == "LayerNormHandler"
    assert module_handler(nn.Sequential()) is None
    assert function_handler("view").name == "ReshapeHandler"
    assert function_handler("no_such_op") is None
    assert kind_handler(OpKind.CONV) is module_handler(nn.Conv2d(3, 4, 1))


def test_one_bn_detector_and_one_std_conv_detector():
    timm_layers = pytest.importorskip("timm.layers")
    import torchvision.ops.misc as tv_misc

    bn_likes = [nn.BatchNorm2d(4), tv_misc.FrozenBatchNorm2d(4), timm_layers.BatchNormAct2d(4),
                timm_layers.FrozenBatchNormAct2d(4)]
    assert all(is_bn_like(m) and is_leaf(m) for m in bn_likes)
    assert not is_bn_like(nn.LayerNorm(4)) and not is_bn_like(nn.GroupNorm(2, 4))
    assert is_std_conv(timm_layers.StdConv2d(3, 4, 3)) and is_std_conv(timm_layers.ScaledStdConv2d(3, 4, 3))

    class StdLookingConv(nn.Conv2d):   # a class name is not a registration
        pass
    assert not is_std_conv(StdLookingConv(3, 4, 3)) and not is_std_conv(nn.Conv2d(3, 4, 3))


def test_kinds_are_strings_and_legacy_other_kinds_still_cost():
    assert OpKind.CONV == "conv" and str(OpKind.BATCH_NORM) == "batch_norm" and OpKind("opaque") is OpKind.OPAQUE
    assert split_kind("other:grid_sample") == ("other", "grid_sample")
    assert split_kind(OpKind.OTHER, "grid_sample") == ("other", "grid_sample")
    y = TensorDesc((1, 4, 3, 3), 1, (0,))
    form = lambda d, dim: ((), float(d.shape[dim]))
    old = OpRecord("gs", "other:grid_sample", "", (y,), y, {})
    new = OpRecord("gs", OpKind.OTHER, "", (y,), y, {}, name="grid_sample")
    assert op_cost(old, form) == op_cost(new, form) == (4.0, [((), 1.0), ((), 4.0), ((), 3.0), ((), 3.0)])
    assert op_cost(OpRecord("x", OpKind.OTHER, "", (y,), y, {}, name="relu"), form) is None


def test_records_carry_kind_enum_and_name():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = analyze(net, torch.randn(1, 3, 8, 8))
    kinds = [(op.kind, op.name) for op in graph.ops]
    assert kinds == [(OpKind.CONV, "0"), (OpKind.OTHER, "1"), (OpKind.CONV, "2")]
    assert isinstance(graph.ops[0].kind, OpKind)
    assert FlopsModel(graph, net, torch.randn(1, 3, 8, 8)).full > 0


def test_registry_snapshot_undoes_a_full_handler():
    class Marker(nn.Module):
        def forward(self, x):
            return x

    class MarkerHandler(OpHandler):
        modules = (Marker,)

    with registry_snapshot():
        register_op(MarkerHandler)
        assert module_handler(Marker()).name == "MarkerHandler"
    assert module_handler(Marker()) is None
