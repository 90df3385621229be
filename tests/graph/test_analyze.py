"""Graph analysis: the paper's group counts and one small model per channel rule.

Every rule is checked through its consequence: the groups found, and (for the hand-built
models) that slimming at random specs computes exactly what the original computes with the
removed channels' input weights zeroed (``check_model``'s equivalence property).
"""

import collections

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cafeslim.errors import TraceError
from cafeslim.export.verify import check_model
from cafeslim.graph import analyze


def _groups_by_producer(graph):
    return {p: g for g in graph.groups for p in g.producers}


def test_resnet50_has_the_papers_37_searchable_widths():
    g = analyze(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
    assert len(g.searchable) == 37
    fixed_reasons = sorted(r for grp in g.fixed for r in grp.reasons)
    assert fixed_reasons == ["model input", "model output"]


def test_mobilenet_v2_has_the_papers_25_searchable_widths():
    g = analyze(torchvision.models.mobilenet_v2(), torch.randn(1, 3, 224, 224))
    assert len(g.searchable) == 25
    # the depthwise conv shares its group with the expansion conv before it
    by = _groups_by_producer(g)
    expand = by["features.2.conv.0.0"]
    assert any(m.module == "features.2.conv.1.0" for m in expand.members)


def test_vit_embedding_and_mlp_are_searchable_and_heads_fixed():
    import timm

    m = timm.create_model("test_vit")
    g = analyze(m, torch.randn(1, 3, 160, 160))
    by = _groups_by_producer(g)
    embed = by["patch_embed.proj"]
    assert embed.searchable
    members = {m.qualname for m in embed.members}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.weight"} <= members
    assert by["blocks.0.mlp.fc1"].searchable
    qkv = by["blocks.0.attn.qkv"]
    assert not qkv.searchable and any("heads" in r for r in qkv.reasons)


class _Dense(nn.Module):
    """Concatenation on channels, then a 1x1 conv reading both parts (DenseNet-like)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(14)
        self.c = nn.Conv2d(14, 10, 1)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x):
        a = F.relu(self.a(x))
        y = torch.cat([a, self.b(a)], dim=1)
        y = self.c(F.relu(self.bn(y)))
        y = F.adaptive_avg_pool2d(y, 4)
        return self.fc(torch.flatten(y, 1))


class _SEGroupedChunk(nn.Module):
    """SE gate, grouped conv, chunk and an add of the two halves."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.expand = nn.Conv2d(16, 24, 1)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.grouped(x)
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = x * gate
        a, b = self.expand(x).chunk(2, dim=1)
        y = a + b
        return self.head(y.mean((2, 3)))


class _Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.conv2(x).mean((2, 3)))


def test_concat_offsets_and_flatten_into_linear():
    m = _Dense()
    g = analyze(m, torch.randn(1, 3, 8, 8))
    by = _groups_by_producer(g)
    a, b = by["a"], by["b"]
    assert a.searchable and b.searchable and a.id != b.id
    c_in_b = [mm for mm in b.members if mm.module == "c" and mm.role == "in"]
    assert c_in_b and c_in_b[0].offset == 8
    fc_in = [mm for mm in by["c"].members if mm.module == "fc"]
    assert fc_in and fc_in[0].inner == 16
    assert check_model(m, torch.randn(2, 3, 8, 8), "dense", n_specs=3, formats=False).passed


def test_se_gate_grouped_conv_and_chunk():
    m = _SEGroupedChunk()
    g = analyze(m, torch.randn(1, 3, 8, 8))
    by = _groups_by_producer(g)
    stem = by["stem"]
    # the grouped conv's output is added to nothing, but the SE gate multiplies it
    assert by["grouped"].id == by["se_expand"].id
    assert stem.blocks == 4 and by["grouped"].blocks == 4
    # the two chunks of `expand` are added: one group, two halves
    halves = by["expand"]
    assert halves.channels == 12 and halves.searchable
    assert check_model(m, torch.randn(2, 3, 8, 8), "se", n_specs=4, formats=False).passed


def test_channel_shuffle_is_fixed_with_a_reason():
    g = analyze(_Shuffle(), torch.randn(1, 3, 4, 4))
    conv = _groups_by_producer(g)["conv"]
    assert not conv.searchable
    assert any("reshape" in r or "channel count" in r for r in conv.reasons)


class _ReshapeToInputWidth(nn.Module):
    """Attention-like: an output reshaped to the *input's* channel count read off its shape."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.inp(x.flatten(2).transpose(1, 2))
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.head((x + self.out(y)).mean(1))


def test_channel_count_read_off_a_shape_couples_or_fixes():
    g = analyze(_ReshapeToInputWidth(), torch.randn(1, 6, 4, 4))
    embed = _groups_by_producer(g)["inp"]
    # `c` is coupled to the attention output, whose channels are fixed by the head split
    assert not embed.searchable
    assert any(w in r for r in embed.reasons for w in ("attention", "channel count", "layout"))


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.block = _Branchy()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            return self.conv(x)
        return self.conv(-x)


def test_untraceable_submodule_becomes_an_opaque_leaf():
    g = analyze(_DataDependent(), torch.randn(1, 3, 4, 4))
    assert "block" in g.tracer
    stem = _groups_by_producer(g)["stem"]
    # The reason names the module and why fx could not follow it.
    assert not stem.searchable and any("_Branchy, which fx cannot trace (TraceError: "
                                       "symbolically traced variables cannot be used as inputs "
                                       "to control flow)" in r for r in stem.reasons)


class _NeedsTwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


def test_model_with_a_second_required_input_is_a_trace_error():
    with pytest.raises(TraceError, match="argument 'y'"):
        analyze(_NeedsTwoInputs(), torch.randn(1, 3, 4, 4))


def test_layer_scale_parameter_joins_the_group():
    class LS(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.gamma = nn.Parameter(torch.ones(8))
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = self.conv(x) * self.gamma.view(1, -1, 1, 1)
            return self.fc(x.mean((2, 3)))

    g = analyze(LS(), torch.randn(1, 3, 4, 4))
    conv = _groups_by_producer(g)["conv"]
    assert conv.searchable
    assert any(m.qualname == "gamma" and m.axis == 0 for m in conv.members)


Pair = collections.namedtuple("Pair", "logits features")


class _NamedTupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        pooled = self.conv2(torch.relu(self.bn(self.conv(x)))).mean((2, 3))
        return Pair(self.fc(pooled), pooled)


def test_a_namedtuple_output_is_followed_and_its_channels_fixed():
    # Rebuilding the output as type(seq)(iterable) fails for a namedtuple (it takes fields).
    from cafeslim.export.verify import PASSED

    g = analyze(_NamedTupleOut(), torch.randn(1, 3, 16, 16))
    by_producer = _groups_by_producer(g)
    assert not by_producer["conv2"].searchable  # its channels are an output (features)
    assert by_producer["conv"].searchable and by_producer["conv"].channels == 8
    report = check_model(_NamedTupleOut(), torch.randn(1, 3, 16, 16), "namedtuple", n_specs=1)
    assert report.statuses["equivalence"] == PASSED
