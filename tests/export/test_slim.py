"""Slimming on small nets whose channel graphs are written by hand (and on analysed models
once graph analysis exists): index maps, shapes, attributes and functional equivalence."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cafeslim.errors import SpecError
from cafeslim.export import module_attributes, patched_attributes, slim, sliced_state
from cafeslim.graph import analyze
from cafeslim.graph.channel_graph import ChannelGraph, Group, Member
from cafeslim.graph.indices import gather_indices


def _norm(module, c, *, buffers=True):
    names = ["weight", "bias"] + (["running_mean", "running_var"] if buffers else [])
    return [Member(module, n, 0, role="norm") for n in names]


def _conv(module, axis, *, bias=False, **kw):
    role = "out" if axis == 0 else "in"
    ms = [Member(module, "weight", axis, role=role, **kw)]
    if bias:
        ms.append(Member(module, "bias", 0, role="out"))
    return ms


class ConvNet(nn.Module):
    """Residual add, concat, grouped conv, depthwise conv, flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn_s = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv_a, self.bn_a = nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv_c = nn.Conv2d(8, 6, 1)
        self.conv_d = nn.Conv2d(14, 8, 1, bias=False)
        self.conv_g = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.conv_dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.act = nn.PReLU(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 4, 10)

    def forward(self, x):
        s = F.relu(self.bn_s(self.stem(x)))
        b = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(s)))))
        r = F.relu(s + b)
        c = self.conv_c(r)
        d = self.conv_d(torch.cat([r, c], 1))
        g = self.act(self.bn_dw(self.conv_dw(self.conv_g(d))))
        return self.fc(torch.flatten(self.pool(g), 1))


def convnet_graph():
    """Groups: 0 input (fixed), 1 S (stem + residual), 2 A, 3 C, 4 D, 5 G, 6 logits (fixed)."""
    groups = [
        Group(0, 3, _conv("stem", 1), searchable=False, reasons=["model input"]),
        Group(1, 8, _conv("stem", 0, bias=True) + _norm("bn_s", 8) + _conv("conv_a", 1)
              + _conv("conv_b", 0) + _norm("bn_b", 8) + _conv("conv_c", 1) + _conv("conv_d", 1)),
        Group(2, 4, _conv("conv_a", 0) + _norm("bn_a", 4) + _conv("conv_b", 1)),
        Group(3, 6, _conv("conv_c", 0, bias=True) + _conv("conv_d", 1, offset=8)),
        Group(4, 8, _conv("conv_d", 0) + _conv("conv_g", 1, blocks=2), blocks=2),
        Group(5, 8, _conv("conv_g", 0) + _conv("conv_dw", 0, bias=True) + _norm("bn_dw", 8)
              + [Member("act", "weight", 0, role="param")] + _conv("fc", 1, inner=4), blocks=2),
        Group(6, 10, _conv("fc", 0, bias=True), searchable=False, reasons=["model output"]),
    ]
    return ChannelGraph(groups=groups, ops=[], input_shape=(2, 3, 8, 8), source="ConvNet")


class TokenNet(nn.Module):
    """A ViT-like block: patch conv, root pos_embed, LayerNorms (one without affine), MLP."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.pos_embed = nn.Parameter(torch.randn(1, 4, 16) * 0.1)
        self.ln = nn.LayerNorm(16)
        self.rms = nn.RMSNorm(16)  # no LayerNorm subclass, same normalized_shape attribute
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.ln2 = nn.LayerNorm(16, elementwise_affine=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos_embed
        t = t + self.fc2(F.gelu(self.fc1(self.rms(self.ln(t)))))
        return self.head(self.ln2(t).mean(1))


def tokennet_graph():
    """Groups: 0 input (fixed), 1 embedding E (16), 2 MLP hidden (32), 3 logits (fixed)."""
    groups = [
        Group(0, 3, _conv("patch", 1), searchable=False, reasons=["model input"]),
        Group(1, 16, _conv("patch", 0, bias=True) + [Member("", "pos_embed", 2, role="param")]
              + _norm("ln", 16, buffers=False) + [Member("rms", "weight", 0, role="norm")] + _conv("fc1", 1) + _conv("fc2", 0, bias=True)
              + [Member("ln2", "normalized_shape", 0, role="attr")] + _conv("head", 1)),
        Group(2, 32, _conv("fc1", 0, bias=True) + _conv("fc2", 1)),
        Group(3, 5, _conv("head", 0, bias=True), searchable=False, reasons=["model output"]),
    ]
    return ChannelGraph(groups=groups, ops=[], input_shape=(2, 3, 8, 8), source="TokenNet")


def _randomise_norms(model):
    """Non-trivial BN statistics, so that a wrong BN slice changes the output."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _removed_positions(graph, spec, m, gid):
    """Positions of removed channels on a member's axis, written out independently."""
    g = graph.groups[gid]
    kept = set(spec[gid])
    if m.blocks > 1:
        chans = [i for i in range(g.block_size) if i not in kept]
    else:
        chans = [c for c in range(g.channels) if c not in kept]
    return [m.offset + c * m.inner + j for c in chans for j in range(m.inner)]


def zero_removed_inputs(model, graph, spec):
    """The reference for functional equivalence: the full model with every consumer's
    weights of removed input channels zeroed."""
    with torch.no_grad():
        for gid in spec:
            for m in graph.groups[gid].members:
                if m.role != "in":
                    continue
                w = model.get_submodule(m.module).get_parameter(m.name)
                pos = torch.tensor(_removed_positions(graph, spec, m, gid), dtype=torch.long)
                w.index_fill_(m.axis, pos, 0.0)
    return model


def random_spec(graph, rng, *, prefix=False):
    spec = {}
    for g in graph.searchable:
        local = rng.randint(1, g.block_size)
        keep = list(range(local)) if prefix else sorted(rng.sample(range(g.block_size), local))
        spec[g.id] = [b * g.block_size + i for b in range(g.blocks) for i in keep]
    return spec


def assert_equivalent(model, graph, spec, x, tol=1e-4):
    model = model.eval()
    small = slim(model, graph, spec).eval()
    ref = zero_removed_inputs(__import__("copy").deepcopy(model), graph, spec).eval()
    with torch.no_grad():
        y, y_ref = small(x), ref(x)
    assert y.shape == y_ref.shape
    scale = y_ref.abs().max().clamp_min(1e-8)
    assert float((y - y_ref).abs().max() / scale) <= tol
    return small


# --------------------------------------------------------------------------- index maps

def test_gather_indices_hand_computed():
    graph = convnet_graph()
    spec = {1: [0, 2, 5], 3: [1, 3], 4: [0, 3, 4, 7], 5: [1, 2, 5, 6]}
    idx = {k: dict(v) for k, v in gather_indices(graph, spec).items()}
    assert idx["stem.weight"][0].tolist() == [0, 2, 5]
    assert idx["bn_s.running_var"][0].tolist() == [0, 2, 5]
    # concat: S at offset 0, C at offset 8
    assert idx["conv_d.weight"][1].tolist() == [0, 2, 5, 9, 11]
    # grouped conv: input axis holds one block's local channels (D keeps local [0, 3])
    assert idx["conv_g.weight"][1].tolist() == [0, 3]
    assert idx["conv_g.weight"][0].tolist() == [1, 2, 5, 6]
    # flatten into Linear: channel c owns columns 4c .. 4c+3
    assert idx["fc.weight"][1].tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23, 24, 25, 26, 27]
    assert 0 not in idx["fc.weight"]  # the output group is fixed
    assert "conv_a.weight" in idx and list(idx["conv_a.weight"]) == [1]  # A untouched, S sliced
    # a group kept whole changes nothing
    assert gather_indices(graph, {2: [0, 1, 2, 3]}) == {}


def test_uncovered_tail_is_kept():
    """Entries past the last member (e.g. a fixed, member-less concat input) stay."""
    conv = nn.Conv2d(10, 4, 1)
    graph = ChannelGraph([Group(0, 6, [Member("", "weight", 1, role="in")])], [], (1, 10, 2, 2))
    assert gather_indices(graph, {0: [1, 2]}, shapes=conv)["weight"][0][1].tolist() == [1, 2, 6, 7, 8, 9]
    idx = gather_indices(graph, {0: [1, 2]})  # without shapes: sliced_state adds the tail
    assert sliced_state(conv, graph, {0: [1, 2]}, idx)["weight"].shape == (4, 6, 1, 1)


def test_slim_shapes_and_attributes():
    model, graph = ConvNet().eval(), convnet_graph()
    spec = {1: [0, 2, 5], 2: [1, 3], 3: [1, 3], 4: [0, 3, 4, 7], 5: [1, 2, 5, 6]}
    small = slim(model, graph, spec)
    assert type(small) is ConvNet and small is not model
    assert small.stem.weight.shape == (3, 3, 3, 3) and small.stem.out_channels == 3
    assert small.bn_s.num_features == 3 and small.bn_s.running_mean.shape == (3,)
    assert small.conv_d.weight.shape == (4, 5, 1, 1) and small.conv_d.in_channels == 5
    assert (small.conv_g.in_channels, small.conv_g.out_channels, small.conv_g.groups) == (4, 4, 2)
    assert small.conv_g.weight.shape == (4, 2, 3, 3)
    # depthwise: groups follow the channel count
    assert (small.conv_dw.in_channels, small.conv_dw.out_channels, small.conv_dw.groups) == (4, 4, 4)
    assert small.act.num_parameters == 4 and small.fc.in_features == 16
    assert isinstance(small.stem.weight, nn.Parameter) and small.stem.weight.requires_grad
    assert model.stem.weight.shape == (8, 3, 3, 3)  # original untouched
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert torch.equal(small.conv_d.weight, model.conv_d.weight[[0, 3, 4, 7]][:, [0, 2, 5, 9, 11]])
    assert torch.equal(small.bn_s.running_var, model.bn_s.running_var[[0, 2, 5]])
    assert torch.equal(small.fc.weight, model.fc.weight[:, [4, 5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23, 24, 25, 26, 27]])


@pytest.mark.parametrize("seed", range(6))
def test_functional_equivalence_convnet(seed):
    torch.manual_seed(seed)
    model, graph = _randomise_norms(ConvNet()), convnet_graph()
    spec = random_spec(graph, random.Random(seed), prefix=seed % 2 == 0)
    assert_equivalent(model, graph, spec, torch.randn(2, 3, 8, 8))


def test_tokennet_layernorm_attr_and_root_param():
    model, graph = TokenNet().eval(), tokennet_graph()
    spec = {1: [0, 3, 4, 9, 15], 2: list(range(0, 32, 3))}
    small = slim(model, graph, spec)
    assert small.pos_embed.shape == (1, 4, 5) and isinstance(small.pos_embed, nn.Parameter)
    assert small.ln.normalized_shape == (5,) and small.ln2.normalized_shape == (5,)
    assert small.rms.normalized_shape == (5,)
    assert small.fc1.weight.shape == (11, 5) and small.fc2.out_features == 5
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    # Only the MLP hidden group changes: no norm in it, so zeroing fc2's inputs is exact.
    assert_equivalent(model, graph, {2: spec[2]}, torch.randn(2, 3, 8, 8))


def test_functional_call_matches_slim():
    """The supernet path (no copy) computes exactly what the slimmed copy computes."""
    for model, graph in ((_randomise_norms(ConvNet()), convnet_graph()), (TokenNet(), tokennet_graph())):
        model.eval()
        spec = random_spec(graph, random.Random(3))
        idx = gather_indices(graph, spec)
        state = sliced_state(model, graph, spec, idx)
        x = torch.randn(2, 3, 8, 8)
        before = {n: getattr(m, "in_channels", None) for n, m in model.named_modules()}
        with patched_attributes(model, module_attributes(model, graph, spec, idx)):
            y = torch.func.functional_call(model, state, (x,))
        assert before == {n: getattr(m, "in_channels", None) for n, m in model.named_modules()}
        assert torch.allclose(y, slim(model, graph, spec)(x), atol=1e-6)
        y.sum().backward()  # gradients reach the full, shared weights
        first = next(model.parameters())
        assert first.grad is not None and first.grad.shape == first.shape


def test_groupnorm_and_transposed_conv():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.ConvTranspose2d(8, 6, 2, stride=2),
                          nn.Conv2d(6, 4, 1))
    graph = ChannelGraph([
        Group(0, 8, _conv("0", 0, bias=True) + _norm("1", 8, buffers=False)
              + [Member("2", "weight", 0, role="in")], blocks=2),
        Group(1, 6, [Member("2", "weight", 1, role="out"), Member("2", "bias", 0, role="out")]
              + _conv("3", 1)),
    ], [], (1, 3, 4, 4))
    small = slim(model, graph, {0: [1, 2, 5, 6], 1: [0, 5]})
    assert small[1].num_channels == 4 and small[1].num_groups == 2
    assert (small[2].in_channels, small[2].out_channels) == (4, 2)
    assert small(torch.randn(1, 3, 4, 4)).shape == (1, 4, 8, 8)


def test_tied_weights_stay_tied():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 4)
            self.c = nn.Linear(4, 6)
            self.c.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x)) + self.b(self.c(x))

    graph = ChannelGraph([Group(0, 6, _conv("a", 0, bias=True) + _conv("c", 0, bias=True) + _conv("b", 1))],
                         [], (1, 4))
    small = slim(Tied(), graph, {0: [1, 4]})
    assert small.a.weight is small.c.weight and small.a.weight.shape == (2, 4)


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("spec, match", [
    ({0: [0, 1]}, "fixed"),
    ({1: [0, 8]}, "outside"),
    ({1: [2, 2]}, "repeats"),
    ({1: []}, "no channel"),
    ({9: [0]}, "names group"),
    ({4: [0, 1, 4]}, "blocks"),
    ({5: [0, 5]}, "blocks"),
])
def test_bad_specs(spec, match):
    with pytest.raises(SpecError, match=match):
        slim(ConvNet(), convnet_graph(), spec)


def test_graph_that_does_not_fit_the_model():
    graph = convnet_graph()
    graph.groups[2].members.append(Member("nope", "weight", 0))
    with pytest.raises(SpecError, match="nope"):
        slim(ConvNet(), graph, {2: [0]})
    graph = convnet_graph()
    graph.groups[2].members.append(Member("conv_c", "weight", 1, offset=6))  # 6 + 4 > 8
    with pytest.raises(SpecError, match="conv_c.weight"):
        slim(ConvNet(), graph, {2: [0]})
    graph = convnet_graph()  # BN running stats forgotten: the module disagrees with itself
    graph.groups[2].members = [m for m in graph.groups[2].members if m.name != "running_var"]
    with pytest.raises(SpecError, match="bn_a.*running_var"):
        slim(ConvNet(), graph, {2: [0]})

    class GainConv(nn.Conv2d):  # like timm's ScaledStdConv2d
        def __init__(self):
            super().__init__(3, 4, 1)
            self.gain = nn.Parameter(torch.ones(4, 1, 1, 1))

    graph = ChannelGraph([Group(0, 4, _conv("", 0, bias=True))], [], (1, 3, 2, 2))
    with pytest.raises(SpecError, match="'gain'"):
        slim(GainConv(), graph, {0: [0, 1]})


# --------------------------------------------------------------------------- analysed models

@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_efficientnet", "tv:mobilenet_v2", "tv:resnet18"])
def test_analysed_models_equivalence(name):
    torch.manual_seed(0)
    lib, arch = name.split(":")
    if lib == "timm":
        timm = pytest.importorskip("timm")
        model, size = timm.create_model(arch), 64
    else:
        import torchvision
        model, size = getattr(torchvision.models, arch)(), 64
    model = _randomise_norms(model).eval()
    x = torch.randn(2, 3, size, size)
    graph = analyze(model, x)
    assert graph.searchable
    for seed, prefix in ((0, True), (1, False)):
        spec = random_spec(graph, random.Random(seed), prefix=prefix)
        normed = {gid for gid in spec for m in graph.groups[gid].members
                  if isinstance(model.get_submodule(m.module) if m.module else model, (nn.LayerNorm, nn.GroupNorm))}
        small = slim(model, graph, spec)
        assert small(x).shape == model(x).shape
        if not normed:
            assert_equivalent(model, graph, spec, x)


def test_analysed_vit_runs_and_matches_functional_call():
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_vit").eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    graph = analyze(model, x)
    spec = random_spec(graph, random.Random(0))
    small = slim(model, graph, spec)
    idx = gather_indices(graph, spec)
    with patched_attributes(model, module_attributes(model, graph, spec, idx)), torch.no_grad():
        y = torch.func.functional_call(model, sliced_state(model, graph, spec, idx), (x,))
    assert torch.allclose(small(x), y, atol=1e-5)
