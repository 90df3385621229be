"""``--init scratch``: a slimmed fresh model has the std a hand-built model of its widths has."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from cafeslim.export.slim import slim
from cafeslim.graph import analyze
from cafeslim.training.init import fan_rules, fans, scratch_model


def _ratios(small, hand):
    """std(small)/std(hand) for every conv/linear weight big enough to estimate its std."""
    hand_p = dict(hand.named_parameters())
    out = {}
    for name, p in small.named_parameters():
        if p.ndim < 2 or p.numel() < 256:
            continue
        assert p.shape == hand_p[name].shape, name  # the same widths, layer by layer
        out[name] = float(p.detach().std() / hand_p[name].detach().std())
    return out


def _spec_like(full, hand, x):
    """The IndexSpec keeping, per group, as many channels as the hand-built model has."""
    g, gh = analyze(full, x), analyze(hand, x)
    assert len(g.groups) == len(gh.groups)
    spec = {a.id: list(range(b.channels)) for a, b in zip(g.groups, gh.groups) if a.searchable}
    assert any(len(v) < g.groups[k].channels for k, v in spec.items())  # widths really differ
    return g, spec


@pytest.mark.parametrize("make_full,make_hand", [
    (lambda: torchvision.models.resnet50(), lambda: torchvision.models.resnet50(width_per_group=32)),
    (lambda: timm.create_model("mobilenetv2_100"), lambda: timm.create_model("mobilenetv2_050")),
], ids=["tv-resnet50-width_per_group", "timm-mobilenetv2-multiplier"])
def test_scratch_std_matches_hand_built_model(make_full, make_hand):
    torch.manual_seed(0)
    full, hand = make_full(), make_hand()
    x = torch.randn(1, 3, 64, 64)
    graph, spec = _spec_like(full, hand, x)
    ratios = _ratios(scratch_model(full, graph, spec), hand)
    bad = {k: round(v, 3) for k, v in ratios.items() if abs(v - 1) > 0.10}
    assert len(ratios) > 20 and not bad, bad
    # The reference is sensitive: slimming without the fan correction is visibly off.
    plain = _ratios(slim(full, graph, spec), hand)
    assert max(abs(v - 1) for v in plain.values()) > 0.25


def test_fan_rules_detects_each_family():
    rules = fan_rules(torchvision.models.resnet18())
    assert rules["conv1.weight"] == "fan_out" and rules["layer1.0.conv1.weight"] == "fan_out"
    assert rules["fc.weight"] == "fan_in"  # nn.Linear's own default
    rules = fan_rules(timm.create_model("mobilenetv2_050"))
    assert rules["blocks.1.0.conv_dw.weight"] == "fan_out_group"  # depthwise: fan-out per group
    assert fans(torch.nn.Conv2d(4, 8, 3, groups=2), (8, 2, 3, 3))["fan_out_group"] == 36
