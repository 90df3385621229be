"""End to end on a real timm model and the demo data loaders: search, then the exported
sub-network scores exactly what the search recorded."""

from __future__ import annotations

import pytest
import torch

from cafeslim.bins import make_bins, parse_budget
from cafeslim.config import TrainConfig
from cafeslim.data import build_data
from cafeslim.flops import FlopsModel
from cafeslim.graph import analyze
from cafeslim.models import create
from cafeslim.search import Fitness, evolution_search
from cafeslim.supernet import Supernet
from cafeslim.pipeline.objects import at_size


@pytest.mark.slow
def test_search_on_test_resnet_matches_the_exported_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        info = at_size(create("timm:test_resnet", num_classes=10), 32)
        x = info.example_input()
        graph = analyze(info.model, x)
        fm = FlopsModel(graph, info.model, x)
        space = make_bins(graph, fm, beta=1.0, offset=1)
        data = build_data("demo", info, TrainConfig(batch_size=32, img_size=32, device="cpu"))
        net = Supernet(info.model, graph, space)
        fit = Fitness(net, space, data.calib, data.val, recal_n=2, flops_model=fm)
        budget = parse_budget("50%", fm.full)
        res = evolution_search(fit, space, fm, budget, population=4, iterations=2, parents=2, rng=0)
        best = res.best
        assert 0.97 * budget <= fm.flops(space.widths(best.k)) <= budget and best.flops <= budget
        assert fit.score_spec(best.best_spec) == best.top1       # deterministic re-scoring
        small = net.export_subnet(best.best_spec).eval()
        correct = total = 0
        with torch.inference_mode():
            for images, labels in data.val:
                correct += int((small(images).argmax(1) == labels).sum())
                total += len(labels)
        assert correct / total == pytest.approx(best.top1)
        assert fit.stats.recal_images == 2 * 32 * fit.stats.candidates
    finally:
        torch.set_num_threads(threads)
