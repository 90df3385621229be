"""FlopsModel's per-op formulas against fvcore, on tiny nets whose op records are written by hand.

Each net is built at several widths and counted with fvcore; the op records describe the
full-width net the way graph analysis does. This checks the formulas independently of
``graph.analyze`` and of ``export.slim``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cafeslim.errors import SpecError, TraceError
from cafeslim.flops import FlopsModel, count_flops, count_flops_by_module, count_params
from cafeslim.graph.channel_graph import ChannelGraph, Group, OpRecord, TensorDesc


def D(shape, axis=None, groups=(), inner=1):
    return TensorDesc(tuple(shape), axis, tuple(groups), inner)


def graph_of(groups, ops, input_shape):
    gs = [Group(id=i, channels=c, searchable=s) for i, (c, s) in enumerate(groups)]
    return ChannelGraph(groups=gs, ops=ops, input_shape=tuple(input_shape))


# ---------------------------------------------------------------- a CNN with every conv flavour

class ConvNet(nn.Module):
    """g0 input 3 (fixed), g1 = a, g2 = b (multiple of 2), g3 = 8, g4 = 4, g5 = 10 (fixed)."""

    def __init__(self, a: int, b: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, a, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(a)
        self.inorm = nn.InstanceNorm2d(a, affine=True)
        self.dw = nn.Conv2d(a, a, 3, padding=1, groups=a, bias=False)
        self.bnn = nn.BatchNorm2d(a, affine=False)
        self.conv2 = nn.Conv2d(a, b, 1)
        self.gn = nn.GroupNorm(2, b)
        self.gconv = nn.Conv2d(b, 8, 3, padding=1, stride=2, groups=2)
        self.conv3 = nn.Conv2d(b + a, 8, 1)
        self.ct = nn.ConvTranspose2d(b, 4, 2, stride=2)
        self.fc = nn.Linear(4 * b, 10)

    def forward(self, x):
        y1 = self.inorm(self.bn1(self.conv1(x)))
        d = self.bnn(self.dw(y1))
        y2 = self.gn(self.conv2(d))
        g = self.gconv(y2)
        c = self.conv3(torch.cat([y2, d], 1))
        t = self.ct(y2)
        up1 = F.interpolate(y2, scale_factor=2, mode="bilinear")
        up2 = F.interpolate(y2, scale_factor=2, mode="nearest")
        up3 = F.interpolate(y2, scale_factor=2, mode="bicubic")   # not counted by fvcore
        p1 = F.adaptive_avg_pool2d(y2, 1)
        p2 = F.adaptive_avg_pool2d(y2, 2).flatten(1)
        gs = F.grid_sample(y2, torch.zeros(1, 3, 3, 2), align_corners=False)
        return self.fc(p2), g, c, t, up1, up2, up3, p1, gs


def convnet_graph(A=6, B=8):
    g = [(3, False), (A, True), (B, True), (8, False), (4, False), (10, False)]
    x = D((1, 3, 8, 8), 1, (0,))
    y1 = D((1, A, 8, 8), 1, (1,))
    y2 = D((1, B, 8, 8), 1, (2,))
    y2u = D((1, B, 16, 16), 1, (2,))
    conv = lambda n, i, o, k, groups=1, dw=False, tr=False: OpRecord(
        n, "conv", n, (i,), o, {"groups": groups, "kernel": k, "depthwise": dw, "transposed": tr})
    ops = [
        conv("conv1", x, y1, (3, 3)),
        OpRecord("bn1", "batch_norm", "bn1", (y1,), y1, {"affine": True}),
        OpRecord("inorm", "instance_norm", "inorm", (y1,), y1, {"affine": True}),
        conv("dw", y1, y1, (3, 3), A, True),
        OpRecord("bnn", "batch_norm", "bnn", (y1,), y1, {"affine": False}),
        conv("conv2", y1, y2, (1, 1)),
        OpRecord("gn", "group_norm", "gn", (y2,), y2, {"affine": True}),
        conv("gconv", y2, D((1, 8, 4, 4), 1, (3,)), (3, 3), 2),
        OpRecord("cat", "other:cat", "", (y2, y1), D((1, A + B, 8, 8), 1, (2, 1)), {}),
        conv("conv3", D((1, A + B, 8, 8), 1, (2, 1)), D((1, 8, 8, 8), 1, (3,)), (1, 1)),
        conv("ct", y2, D((1, 4, 16, 16), 1, (4,)), (2, 2), tr=True),
        OpRecord("up1", "upsample", "", (y2,), y2u, {"mode": "bilinear"}),
        OpRecord("up2", "upsample", "", (y2,), y2u, {"mode": "nearest"}),
        OpRecord("up3", "upsample", "", (y2,), y2u, {"mode": "bicubic"}),
        OpRecord("p1", "adaptive_avg_pool", "", (y2,), D((1, B, 1, 1), 1, (2,)), {"output_size": 1}),
        OpRecord("p2", "adaptive_avg_pool", "", (y2,), D((1, B, 2, 2), 1, (2,)), {"output_size": 2}),
        OpRecord("flat", "other:flatten", "", (D((1, B, 2, 2), 1, (2,)),), D((1, 4 * B), 1, (2,), 4), {}),
        OpRecord("fc", "linear", "fc", (D((1, 4 * B), 1, (2,), 4),), D((1, 10), 1, (5,)), {"bias": True}),
        OpRecord("gs", "other:grid_sample", "", (y2, D((1, 3, 3, 2))), D((1, B, 3, 3), 1, (2,)), {}),
    ]
    return graph_of(g, ops, (1, 3, 8, 8))


@pytest.fixture(scope="module")
def convnet_fm():
    return FlopsModel(convnet_graph())


@pytest.mark.parametrize("a,b", [(6, 8), (1, 2), (3, 4), (5, 6), (6, 2)])
def test_convnet_matches_fvcore(convnet_fm, a, b):
    expect = count_flops(ConvNet(a, b), torch.randn(1, 3, 8, 8))
    assert convnet_fm.flops({1: a, 2: b}) == pytest.approx(expect, rel=1e-12)


def test_full_and_evaluate_agree(convnet_fm):
    assert convnet_fm.full == convnet_fm.flops({})
    assert convnet_fm.full == count_flops(ConvNet(6, 8), torch.randn(1, 3, 8, 8))
    W = np.array([[a, b] for a in range(1, 7) for b in (2, 4, 6, 8)], dtype=float)
    batched = convnet_fm.evaluate(W, chunk=5)
    one_by_one = [convnet_fm.flops({1: int(a), 2: int(b)}) for a, b in W]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-12)


def test_min_marginal_by_module(convnet_fm):
    assert convnet_fm.min_flops() == convnet_fm.flops({1: 1, 2: 1})
    assert convnet_fm.min_flops({2: 4}) == convnet_fm.flops({1: 1, 2: 4})
    eps = convnet_fm.marginal()
    assert eps[0] == pytest.approx(convnet_fm.full - convnet_fm.flops({1: 5}))
    assert eps[1] == pytest.approx(convnet_fm.full - convnet_fm.flops({2: 7}))
    per = convnet_fm.by_module({1: 3})
    assert sum(per.values()) == pytest.approx(convnet_fm.flops({1: 3}))
    assert per["conv1"] == 3 * 3 * 9 * 64


def test_bad_widths(convnet_fm):
    with pytest.raises(SpecError):
        convnet_fm.flops({3: 4})           # fixed group
    with pytest.raises(SpecError):
        convnet_fm.flops({99: 4})          # no such group
    with pytest.raises(SpecError):
        convnet_fm.evaluate(np.ones((3, 5)))
    assert convnet_fm.flops({3: 8}) == convnet_fm.full   # a fixed group at its own width is fine


def test_inconsistent_graph_is_refused():
    g = convnet_graph()
    bad = OpRecord("x", "conv", "x", (D((1, 7, 8, 8), 1, (1,)),), D((1, 8, 8, 8), 1, (2,)),
                   {"groups": 1, "kernel": (1, 1), "depthwise": False, "transposed": False})
    g.ops.append(bad)
    with pytest.raises(TraceError, match="do not add up"):
        FlopsModel(g)


# ---------------------------------------------------------------- tokens: linear, norms, matmuls

class TokenNet(nn.Module):
    """g0 = 6 (fixed input), g1 = a, g2 = c (searchable)."""

    def __init__(self, a: int, c: int):
        super().__init__()
        self.fc1 = nn.Linear(6, a)
        self.ln = nn.LayerNorm(a)
        self.ln0 = nn.LayerNorm(a, elementwise_affine=False)
        self.fc2 = nn.Linear(a, c)

    def forward(self, x):
        q = self.ln0(self.ln(self.fc1(x)))                       # [1, 5, a]
        h = self.fc2(q)                                          # [1, 5, c]
        kt = q.transpose(-1, -2)
        outs = [
            h,
            q @ kt,
            torch.bmm(q, kt),
            torch.baddbmm(torch.zeros(1, 5, 5), q, kt),          # no fvcore handle
            torch.mm(q[0], q[0].t()),
            torch.addmm(torch.zeros(1), h[0].t(), h[0]),       # [c, 5] @ [5, c]
            torch.einsum("bnc,bmc->bnm", q, q),
            torch.einsum("bnc,bcd->bnd", q, kt),                 # fvcore's special case
            torch.einsum("bnc,bnd->bcd", q, h),
            F.scaled_dot_product_attention(q[:, None], q[:, None], q[:, None]),  # not counted
        ]
        return outs


def tokennet_graph(A=8, C=12):
    g = [(6, False), (A, True), (C, True)]
    x = D((1, 5, 6), 2, (0,))
    q = D((1, 5, A), 2, (1,))
    kt = D((1, A, 5), 1, (1,))
    h = D((1, 5, C), 2, (2,))
    att = D((1, 5, 5))
    ops = [
        OpRecord("fc1", "linear", "fc1", (x,), q, {"bias": True}),
        OpRecord("ln", "layer_norm", "ln", (q,), q, {"affine": True}),
        OpRecord("ln0", "layer_norm", "ln0", (q,), q, {"affine": False}),
        OpRecord("fc2", "linear", "fc2", (q,), h, {"bias": True}),
        OpRecord("mm1", "matmul", "", (q, kt), att, {"op": "matmul"}),
        OpRecord("bmm", "matmul", "", (q, kt), att, {"op": "torch.bmm"}),
        OpRecord("bad", "matmul", "", (D((1, 5, 5)), q, kt), att, {"op": "baddbmm"}),
        OpRecord("mm2", "matmul", "", (D((5, A), 1, (1,)), D((A, 5), 0, (1,))), D((5, 5)), {"op": "mm"}),
        OpRecord("addmm", "matmul", "", (D((1,)), D((C, 5), 0, (2,)), D((5, C), 1, (2,))),
                 D((C, C), 0, (2,)), {"op": "addmm"}),
        OpRecord("e1", "einsum", "", (None, q, q), att, {"equation": "bnc,bmc->bnm"}),
        OpRecord("e2", "einsum", "", (None, q, kt), att, {"equation": "bnc,bcd->bnd"}),
        OpRecord("e3", "einsum", "", (None, q, h), D((1, A, C)), {"equation": "bnc,bnd->bcd"}),
        OpRecord("sdpa", "other:scaled_dot_product_attention", "", (q, q, q), q, {}),
    ]
    return graph_of(g, ops, (1, 5, 6))


@pytest.mark.parametrize("a,c", [(8, 12), (1, 1), (4, 7), (8, 3)])
def test_tokennet_matches_fvcore(a, c):
    fm = FlopsModel(tokennet_graph())
    expect = count_flops(TokenNet(a, c), torch.randn(1, 5, 6))
    # einsum's generic path goes through numpy's 4-significant-digit printout; small sizes are exact
    assert fm.flops({1: a, 2: c}) == pytest.approx(expect, rel=1e-12)


# ---------------------------------------------------------------- opaque modules

class Blackbox(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * 2


class OpaqueNet(nn.Module):
    def __init__(self, a: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.box = Blackbox()
        self.head = nn.Conv2d(4, a, 1)

    def forward(self, x):
        return self.head(self.box(self.stem(x)) + self.box(x[:, :1].expand(-1, 4, -1, -1)))


def opaquenet_graph(A=6):
    x = D((1, 3, 8, 8), 1, (0,))
    f = D((1, 4, 8, 8), 1, (1,))
    conv = lambda n, i, o: OpRecord(n, "conv", n, (i,), o, {"groups": 1, "kernel": (1, 1)})
    ops = [
        conv("stem", x, f),
        OpRecord("box", "opaque", "box", (f,), f, {"what": "Blackbox", "module": "box"}),
        OpRecord("box_1", "opaque", "box", (f,), f, {"what": "Blackbox", "module": "box"}),
        conv("head", f, D((1, A, 8, 8), 1, (2,))),
    ]
    return graph_of([(3, False), (4, False), (A, True)], ops, (1, 3, 8, 8))


def test_opaque_modules_are_counted_once_per_module():
    model, x = OpaqueNet(), torch.randn(1, 3, 8, 8)
    fm = FlopsModel(opaquenet_graph(), model, x)
    assert fm.full == count_flops(model, x)
    assert fm.flops({2: 2}) == count_flops(OpaqueNet(2), x)
    assert fm.by_module()["box"] == count_flops_by_module(model, x)["box"] == 2 * 4 * 4 * 9 * 64
    without = FlopsModel(opaquenet_graph())
    assert without.unknown_opaque == ["box", "box_1"]
    assert without.full == fm.full - 2 * 4 * 4 * 9 * 64


def test_opaque_function_gets_the_remainder():
    model, x = OpaqueNet(), torch.randn(1, 3, 8, 8)
    g = opaquenet_graph()
    g.ops[1] = OpRecord("box", "opaque", "", g.ops[1].inputs, g.ops[1].output, {"what": "f"})
    g.ops[2] = OpRecord("box_1", "opaque", "", g.ops[2].inputs, g.ops[2].output, {"what": "f"})
    fm = FlopsModel(g, model, x)
    assert fm.full == count_flops(model, x)
    assert fm.flops({2: 3}) == count_flops(OpaqueNet(3), x)


# ---------------------------------------------------------------- count helpers

def test_count_helpers_keep_modes_and_grads():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    m.train()
    m[2].eval()
    x = torch.randn(1, 3, 6, 6)
    assert count_flops(m, x) == 4 * 3 * 9 * 16 + 2 * 4 * 16   # BN counted in eval mode
    assert [mod.training for mod in m.modules()] == [True, True, True, False]
    assert count_params(m) == 4 * 3 * 9 + 4 + 8
    assert count_flops(m, (x,)) == count_flops(m, x)


def test_no_searchable_groups():
    g = graph_of([(3, False), (4, False)], [OpRecord(
        "c", "conv", "c", (D((1, 3, 8, 8), 1, (0,)),), D((1, 4, 8, 8), 1, (1,)),
        {"groups": 1, "kernel": (1, 1)})], (1, 3, 8, 8))
    fm = FlopsModel(g)
    assert fm.full == 3 * 4 * 64
    assert fm.evaluate(np.zeros((4, 0))).tolist() == [fm.full] * 4
    assert math.isclose(fm.min_flops(), fm.full)


def test_opaque_module_and_function_together():
    model, x = OpaqueNet(), torch.randn(1, 3, 8, 8)
    g = opaquenet_graph()
    g.ops[2] = OpRecord("box_1", "opaque", "", g.ops[2].inputs, g.ops[2].output, {"what": "f"})
    fm = FlopsModel(g, model, x)        # "box" already holds both calls: nothing remains
    assert fm.remainders == {"box": 2 * 4 * 4 * 9 * 64, "": 0.0}
    assert fm.full == count_flops(model, x)


# ---------------------------------------------------------------- weight-standardised convs

class StdNet(nn.Module):
    def __init__(self, a: int):
        super().__init__()
        from timm.layers import ScaledStdConv2d, StdConv2d

        self.c1 = StdConv2d(3, a, 3, padding=1)
        self.c2 = ScaledStdConv2d(a, 4, 1)

    def forward(self, x):
        return self.c2(self.c1(x))


def stdnet_graph(A=6, std=(None, None)):
    ops = []
    for name, x, y, k, s in [("c1", D((1, 3, 8, 8), 1, (0,)), D((1, A, 8, 8), 1, (1,)), (3, 3), std[0]),
                             ("c2", D((1, A, 8, 8), 1, (1,)), D((1, 4, 8, 8), 1, (2,)), (1, 1), std[1])]:
        attrs = {"groups": 1, "kernel": k}
        if s is not None:
            attrs["std"] = s
        ops.append(OpRecord(name, "conv", name, (x,), y, attrs))
    return graph_of([(3, False), (A, True), (4, False)], ops, (1, 3, 8, 8))


def test_weight_standardisation_is_counted():
    pytest.importorskip("timm")
    x = torch.randn(1, 3, 8, 8)
    from_attrs = FlopsModel(stdnet_graph(std=(True, "gain")))
    from_model = FlopsModel(stdnet_graph(), StdNet(6), x)
    plain = FlopsModel(stdnet_graph())
    for a in (6, 2):
        expect = count_flops(StdNet(a), x)
        assert from_attrs.flops({1: a}) == expect
        assert from_model.flops({1: a}) == expect
    assert plain.full == count_flops(StdNet(6), x) - 4 * 6 * 3 * 9 - 5 * 4 * 6


def test_disagreement_with_fvcore_is_reported():
    g = convnet_graph()
    g.ops[:] = [op for op in g.ops if op.node != "bn1"]      # an op the model would not cost
    model, x = ConvNet(6, 8), torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="'bn1'"):
        fm = FlopsModel(g, model, x)
    assert fm.fvcore_full == count_flops(model, x) == fm.full + 2 * 6 * 64


def test_einsum_with_list_operands_is_costed_as_a_constant():
    class E(nn.Module):
        def forward(self, x):
            return torch.einsum("bnc,bmc->bnm", [x, x])

    x = torch.randn(1, 5, 6)
    rec = OpRecord("e", "einsum", "", (), D((1, 5, 5)), {"op": "einsum", "equation": "bnc,bmc->bnm"})
    g = graph_of([(6, False)], [rec], (1, 5, 6))
    assert FlopsModel(g).unknown_opaque == ["e"]
    assert FlopsModel(g, E(), x).full == 5 * 5 * 6


def test_width_out_of_range(convnet_fm):
    with pytest.raises(SpecError):
        convnet_fm.flops({1: 0})
    with pytest.raises(SpecError):
        convnet_fm.flops({1: 7})


# ---------------------------------------------------------------- three-operand einsum (degree 3)

class Outer3(nn.Module):
    def __init__(self, a: int, b: int, c: int):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, a), nn.Linear(4, b), nn.Linear(4, c)

    def forward(self, x):
        return torch.einsum("bi,bj,bk->bijk", self.l1(x), self.l2(x), self.l3(x))


def test_products_of_three_widths():
    x = D((2, 4), 1, (0,))
    ys = [D((2, n), 1, (i + 1,)) for i, n in enumerate((8, 10, 12))]
    ops = [OpRecord(f"l{i}", "linear", f"l{i}", (x,), y, {}) for i, y in enumerate(ys)]
    ops.append(OpRecord("e", "einsum", "", tuple(ys), D((2, 8, 10, 12)), {"equation": "bi,bj,bk->bijk"}))
    fm = FlopsModel(graph_of([(4, False), (8, True), (10, True), (12, True)], ops, (2, 4)))
    W = np.array([(8, 10, 12), (4, 5, 6), (1, 10, 12), (8, 1, 1), (3, 7, 2)], dtype=float)
    expect = [count_flops(Outer3(*map(int, w)), torch.randn(2, 4)) for w in W]
    np.testing.assert_allclose(fm.evaluate(W), expect, rtol=1e-12)


# ---------------------------------------------------------------- functions fx keeps whole

def _cafeslim_flops_test_bmm(x):
    return torch.einsum("bnc,bmc->bnm", x, x)


class NotraceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return _cafeslim_flops_test_bmm(self.fc(x))


def test_timm_notrace_functions_are_costed_from_fvcore():
    timm_layers = pytest.importorskip("timm.layers")
    timm_layers.register_notrace_function(_cafeslim_flops_test_bmm)
    x = D((1, 5, 6), 2, (0,))
    y = D((1, 5, 6), 2, (1,))
    ops = [OpRecord("fc", "linear", "fc", (x,), y, {}),
           OpRecord("f", "other:_cafeslim_flops_test_bmm", "", (y,), D((1, 5, 5)), {})]
    g = graph_of([(6, False), (6, False)], ops, (1, 5, 6))
    assert FlopsModel(g).unknown_opaque == ["f"]
    fm = FlopsModel(g, NotraceNet(), torch.randn(1, 5, 6))
    assert fm.full == count_flops(NotraceNet(), torch.randn(1, 5, 6)) == 5 * 6 * 6 + 5 * 5 * 6


def test_same_padding_convs_are_counted():
    # fvcore alone counts aten::_convolution_mode (string padding) as zero; count_flops does not.
    x = torch.randn(1, 4, 16, 16)
    for groups in (1, 4):
        same = nn.Conv2d(4, 4, 7, padding="same", groups=groups)
        assert count_flops(same, x) == count_flops(nn.Conv2d(4, 4, 7, padding=3, groups=groups), x)
    assert count_flops(nn.Conv2d(4, 4, 3, padding="valid"), x) == 4 * 4 * 9 * 14 * 14
