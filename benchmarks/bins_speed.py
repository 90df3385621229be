"""Speed of ``random_widths``: 2,000 valid width vectors for torchvision ResNet-50 at 50 % FLOPs.

Run: ``python benchmarks/bins_speed.py [--n 2000] [--budget 50%] [--beta 1] [--repeat 5]``

Builds the FLOPs-sensitive bins (β = 1) once, then times ``random_widths`` (tilted start plus
the Metropolis walk, default sweeps) and ``uniform_widths``; prints the median and the spread of
the FLOPs of the drawn vectors relative to the budget (every one must be in [0.97, 1]), and the
FLOPs-per-bin spread of FLOPs-sensitive against uniform bins. The target is < 2 s for 2,000.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchvision

from cafeslim.bins import (bin_spread, make_bins, min_space_flops, parse_budget, random_widths,
                           space_flops, uniform_widths)
from cafeslim.flops import FlopsModel
from cafeslim.graph import analyze


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="width vectors to draw")
    ap.add_argument("--budget", default="50%", help="FLOPs budget (2G, 50%%, 0.5x, ...)")
    ap.add_argument("--beta", type=float, default=1.0, help="β of Eq. 9")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions (median reported)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = analyze(model, x, source="tv:resnet50")
    fm = FlopsModel(graph)
    space = make_bins(graph, fm, beta=args.beta)
    budget = parse_budget(args.budget, fm.full, min_space_flops(space, fm))
    print(f"resnet50: {len(space.groups)} groups, 10^{space.log10_size:.1f} width vectors, "
          f"budget {budget / 1e9:.3f} G of {fm.full / 1e9:.3f} G")

    times, K = [], None
    for i in range(args.repeat):
        t = time.perf_counter()
        K = random_widths(space, fm, budget, args.n, np.random.default_rng(i))
        times.append(time.perf_counter() - t)
    rel = space_flops(space, fm, K) / budget
    print(f"random_widths: {args.n} vectors in {statistics.median(times):.3f} s median "
          f"(min {min(times):.3f}, max {max(times):.3f}, {args.repeat} runs); FLOPs/budget in "
          f"[{rel.min():.4f}, {rel.max():.4f}], {len(np.unique(K, axis=0))} distinct")

    t = time.perf_counter()
    k = uniform_widths(space, fm, budget)
    print(f"uniform_widths: {time.perf_counter() - t:.3f} s, FLOPs/budget "
          f"{space_flops(space, fm, k)[0] / budget:.4f}")

    uni = make_bins(graph, fm, mode="uniform", num_bins=int(round(space.num_bins.mean())))
    print(f"FLOPs per bin max/min: {bin_spread(space):.2f} (FLOPs-sensitive, β={args.beta:g}) vs "
          f"{bin_spread(uni):.2f} (uniform, K={uni.meta['num_bins']})")


if __name__ == "__main__":
    main()
