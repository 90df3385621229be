"""Speed of the analytic FLOPs model against one fvcore count, on torchvision ResNet-50.

Run: ``python benchmarks/flops_speed.py [--n 10000] [--repeat 5]``

Prints, from one run on the same machine: vectors/s of ``FlopsModel.evaluate`` on a batch of
random width vectors, one fvcore count of the (randomly initialised) full model, and the ratio
of the two times per vector. Also prints the agreement of ``FlopsModel.full`` with fvcore.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchvision

from cafeslim.flops import FlopsModel, count_flops
from cafeslim.graph.analyze import analyze


def _timed(fn, repeat: int):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="width vectors per batch")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions (median reported)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = analyze(model, x, source="tv:resnet50")
    t = time.perf_counter()
    FlopsModel(graph)                                      # from the graph alone
    build_s = time.perf_counter() - t
    fm = FlopsModel(graph, model, x)                       # + one fvcore check of the full model

    rng = np.random.default_rng(0)
    full = graph.width_vector({})
    blocks = np.array([g.blocks for g in graph.searchable], dtype=float)
    units = full / blocks
    W = np.ceil(rng.uniform(0.0, 1.0, (args.n, len(full))) * units) * blocks   # legal widths

    fm.evaluate(W[:100])                                   # warm-up (allocations, BLAS)
    _, ev = _timed(lambda: fm.evaluate(W), args.repeat)
    ev_s = statistics.median(ev)

    # fvcore's first trace in a process pays one-off JIT set-up; report it, compare the median.
    fv, cold = _timed(lambda: count_flops(model, x), 1)
    _, warm = _timed(lambda: count_flops(model, x), max(3, args.repeat))
    fv_s = statistics.median(warm)

    per_vec = ev_s / args.n
    print(f"model                    torchvision resnet50 @224, {len(full)} searchable groups, "
          f"{torch.get_num_threads()} threads")
    print(f"FlopsModel.full          {fm.full:,.0f}   fvcore {fv:,}   "
          f"rel. diff {abs(fm.full - fv) / fv:.2e}")
    print(f"FlopsModel build         {build_s * 1e3:.1f} ms from the graph alone")
    print(f"evaluate {args.n} vectors  {ev_s * 1e3:.2f} ms (median of {args.repeat})  ->  "
          f"{args.n / ev_s:,.0f} vectors/s, {per_vec * 1e6:.3f} us/vector")
    print(f"fvcore count (1 model)   {fv_s * 1e3:.1f} ms median of {len(warm)} "
          f"(first call {cold[0] * 1e3:.0f} ms)")
    print(f"time per vector / one fvcore count = {per_vec / fv_s:.2e}  "
          f"(FlopsModel is {fv_s / per_vec:,.0f}x faster per width vector)")


if __name__ == "__main__":
    main()
