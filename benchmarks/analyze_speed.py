"""Graph analysis speed: ``cafeslim.graph.analyze`` vs Torch-Pruning's DependencyGraph.

Both are timed side by side in one process on the same model and input (median of
``--repeat`` runs after one warm-up), and the ratio is printed; absolute times on a shared
machine mean little. Torch-Pruning is only needed for the comparison
(``pip install torch-pruning``); without it only our time is printed.

    python benchmarks/analyze_speed.py --model tv:resnet50 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tv:resnet50")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cafeslim.graph import analyze
    from cafeslim.models import create

    info = create(args.model)
    model, x = info.model, info.example_input()
    ours = _median_time(lambda: analyze(model, x), args.repeat)
    print(f"cafeslim analyze {args.model}: {ours:.3f} s (median of {args.repeat})")
    try:
        import torch_pruning as tp
    except ImportError:
        print("torch-pruning not installed: no ratio")
        return
    theirs = _median_time(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x), args.repeat)
    print(f"Torch-Pruning {tp.__version__} DependencyGraph {args.model}: {theirs:.3f} s")
    print(f"ratio cafeslim / Torch-Pruning: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
