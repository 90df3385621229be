"""Where min-min training samples: FLOPs of Eq. 1's uniform widths against a budget window.

Prints, for a model's FLOPs-sensitive bins, the mean FLOPs fraction of N widths drawn by each
``--sampling`` mode and the share of them inside the ``[0.97 B, B]`` window of a budget. No
training and no data: the model is analysed once and its FLOPs model evaluated on the draws.

    OMP_NUM_THREADS=1 python benchmarks/sampling_flops.py tv:resnet50 --budget 0.5 --n 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="tv:resnet50")
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the full FLOPs")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from cafeslim.bins import make_bins, space_flops
    from cafeslim.bins.sampling import WidthSampler
    from cafeslim.models import create
    from cafeslim.pipeline.objects import analyze_info

    t0 = time.perf_counter()
    a = analyze_info(create(args.model))
    space = make_bins(a.graph, a.fm, beta=args.beta)
    budget = args.budget * a.fm.full
    print(f"{args.model}: {len(space.groups)} searchable groups, β={args.beta:g}, full "
          f"{a.fm.full / 1e9:.3f} GFLOPs; window [{0.97 * args.budget:.3f}, {args.budget:.3f}] "
          f"of full; {args.n} draws each (analysis {time.perf_counter() - t0:.0f} s)")
    for mode in ("uniform", "mixed", "budget"):
        t1 = time.perf_counter()
        sampler = WidthSampler(space, a.fm, [budget], mode=mode, mix=0.5, seed=args.seed)
        rng = np.random.default_rng(args.seed + 1)
        K = np.stack([sampler.sample(rng) for _ in range(args.n)])
        f = space_flops(space, a.fm, K) / a.fm.full
        inside = ((f >= 0.97 * args.budget) & (f <= args.budget)).mean()
        print(f"  {mode:8s} mean FLOPs fraction {f.mean():.3f} (sd {f.std():.3f}, "
              f"min {f.min():.3f}, max {f.max():.3f}); inside the window {inside:.1%} "
              f"({int(round(inside * args.n))} of {args.n}); sampler setup + draws "
              f"{time.perf_counter() - t1:.1f} s")


if __name__ == "__main__":
    main()
