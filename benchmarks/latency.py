"""Does saved FLOPs become saved time? Latency of a slimmed ResNet-50 side by side.

Three models are timed in alternation (so load spikes hit all alike), in PyTorch eager
(``inference_mode``) and onnxruntime (CPUExecutionProvider), at batch 1 and 32:

- the original torchvision ResNet-50 (random init);
- cafeslim's export at 50% FLOPs (the uniform widths of ``cafeslim export --flops 50%``);
- a hand-built model of exactly those widths: the same architecture with every conv, BN and
  linear constructed fresh at the slimmed shapes (no slicing history at all).

Targets (issue 5): slimmed / original ≤ 0.6, and slimmed / hand-built = 1.0 ± 0.05 (no leftover
gather or copy ops).

    python benchmarks/latency.py --threads 2 [--divisor 8]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn


def hand_built(slimmed: nn.Module) -> nn.Module:
    """Same module tree, every layer constructed anew at the slimmed shapes."""
    fresh = copy.deepcopy(slimmed)
    for name, mod in list(fresh.named_modules()):
        if isinstance(mod, nn.Conv2d):
            new = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.groups, mod.bias is not None)
        elif isinstance(mod, nn.BatchNorm2d):
            new = nn.BatchNorm2d(mod.num_features)
        elif isinstance(mod, nn.Linear):
            new = nn.Linear(mod.in_features, mod.out_features, mod.bias is not None)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(fresh.get_submodule(parent) if parent else fresh, child, new)
    return fresh.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--divisor", type=int, default=1, help="widths multiple of this (8 suits SIMD)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cafeslim.bins import channel_space, parse_budget, uniform_widths
    from cafeslim.export import save_onnx, slim
    from cafeslim.export.evaluate import _latencies
    from cafeslim.flops import FlopsModel, count_flops
    from cafeslim.graph import analyze
    from cafeslim.models import create

    info = create("tv:resnet50")
    model, x = info.model, info.example_input()
    graph = analyze(model, x)
    fm = FlopsModel(graph)
    space = channel_space(graph, fm, divisor=args.divisor)
    budget = parse_budget(args.budget, fm.full)
    small = slim(model, graph, space.fixed_spec(uniform_widths(space, fm, budget))).eval()
    built = hand_built(small)
    flops = [count_flops(m, x) for m in (model, small, built)]
    print(f"FLOPs: original {flops[0]:,}  slimmed {flops[1]:,} ({flops[1] / flops[0]:.3f}x)  "
          f"hand-built {flops[2]:,}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, m in (("orig", model), ("slim", small), ("built", built)):
            p = Path(tmp) / f"{name}.onnx"
            save_onnx(m, x, p)
            paths.append(p)
        lat = _latencies([model, small, built], paths, info.input_size, (1, 32), args.repeats, 20.0,
                         threads=args.threads)
    print(f"{'':28s}{'original':>10s}{'slimmed':>10s}{'built':>10s}{'slim/orig':>11s}{'slim/built':>11s}")
    for key in lat[0]:
        o, s, b = (d[key] for d in lat)
        print(f"{key:28s}{o * 1e3:9.1f}ms{s * 1e3:9.1f}ms{b * 1e3:9.1f}ms{s / o:11.3f}{s / b:11.3f}")


if __name__ == "__main__":
    main()
