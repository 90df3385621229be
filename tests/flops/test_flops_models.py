"""FlopsModel against fvcore on real timm/torchvision models, full width and slimmed.

The contract (DESIGN.md, "FLOPs"): what the search measures is what the export delivers, so
``FlopsModel(widths)`` must equal fvcore's count of ``slim(model, graph, spec)`` within 0.5 %,
and the full-width model within 0.1 %.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from cafeslim.export.slim import slim
from cafeslim.flops import FlopsModel, count_flops
from cafeslim.graph import analyze

MODELS = [
    "timm:test_resnet",
    "timm:test_efficientnet",
    "timm:test_vit",
    "timm:test_convnext",
    "tv:resnet18",
    "tv:mobilenet_v2",
]
# Full width only: weight-standardised convs (nfnet) and opaque functions/modules (maxvit, vit4,
# vit_relpos), whose slimming is exercised by the export tests.
EXTRA_FULL = ["timm:test_nfnet", "timm:test_maxvit", "timm:test_vit4", "timm:test_vit_relpos"]
# Slower torchvision models: concat (densenet, googlenet), grouped convs (regnet), SE (effnet).
SLOW = ["tv:densenet121", "tv:googlenet", "tv:regnet_y_400mf", "tv:efficientnet_b0",
        "tv:shufflenet_v2_x0_5", "tv:resnet50"]


def build(name: str):
    """Randomly initialised model and its own example input (no hub downloads)."""
    torch.manual_seed(0)
    src, arch = name.split(":", 1)
    if src == "tv":
        import torchvision

        size = (3, 299, 299) if arch == "inception_v3" else (3, 224, 224)
        model = torchvision.models.get_model(arch, weights=None)
    else:
        import timm

        model = timm.create_model(arch, pretrained=False)
        size = tuple(model.pretrained_cfg["input_size"])
    return model.eval(), torch.randn(1, *size)


_CACHE: dict = {}


def analysed(name: str):
    """Model, input, graph, FlopsModel and fvcore's full count, built once per test session."""
    if name not in _CACHE:
        model, x = build(name)
        graph = analyze(model, x, source=name)
        fm = FlopsModel(graph, model, x)          # counts the full model with fvcore once
        _CACHE[name] = model, x, graph, fm, fm.fvcore_full
    return _CACHE[name]


def random_widths(graph, rng: np.random.Generator, low: float = 0.1):
    """A legal width per searchable group (a multiple of its blocks), between ~low and full."""
    out = {}
    for g in graph.searchable:
        units = g.channels // g.blocks
        out[g.id] = int(rng.integers(max(1, int(low * units)), units + 1)) * g.blocks
    return out


@pytest.mark.parametrize("name", MODELS + EXTRA_FULL + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_full_width_equals_fvcore(name):
    model, x, graph, fm, fv = analysed(name)
    assert graph.searchable, f"{name}: no searchable group, nothing to test"
    assert fm.full == pytest.approx(fv, rel=1e-3), (name, fm.full, fv, fm.remainders)


@pytest.mark.parametrize("name", MODELS + ["timm:test_nfnet"])
def test_graph_alone_is_exact(name):
    """Without the model, every op fvcore counts must still be costed exactly (no opaque op
    hides FLOPs in these models)."""
    model, x, graph, fm, fv = analysed(name)
    assert not any(fm.remainders.values()), fm.remainders
    assert FlopsModel(graph).full == fv


@pytest.mark.parametrize("name", MODELS + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_slimmed_model_equals_fvcore(name):
    model, x, graph, fm, _ = analysed(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    samples = [random_widths(graph, rng) for _ in range(2)]
    samples.append({g.id: g.blocks for g in graph.searchable})      # the narrowest network
    for widths in samples:
        slimmed = slim(model, graph, graph.prefix_spec(widths))
        fv = count_flops(slimmed, x)
        assert fm.flops(widths) == pytest.approx(fv, rel=5e-3), (name, fm.flops(widths), fv)
