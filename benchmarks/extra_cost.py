"""The method's extra cost on this CPU, old and new settings side by side (issue 11, "Must show").

One process, interleaved, the order alternating between repetitions, so load changes on the
shared machine hit every side alike:

* **min-min**: a step with r = 1 over a random step with r = 0 (the same sampled widths,
  :func:`speed.bench_minmin`'s protocol): full-batch fp32 selection one by one (today's
  default), the same as one batched (vmapped) forward, and the library's current defaults
  (``MinMinConfig()``), one by one and batched;
* **search**: width vectors scored per second by :class:`~cafeslim.search.Fitness` with
  today's 20 recalibration batches, candidates one by one, against the current defaults
  (``SearchConfig().recal_batches``) one by one and batched; the same width vectors for every
  side, one warm-up vector each, demo data, untrained supernet (speed does not depend on the
  weights).

Usage:
    python benchmarks/extra_cost.py --model timm:test_resnet --size 64 --batch 64
    python benchmarks/extra_cost.py --model tv:resnet50 --size 128 --batch 16 --reps 3 --widths 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cafeslim.config import MinMinConfig, SearchConfig  # noqa: E402
from cafeslim.supernet import Supernet, minmin_step  # noqa: E402


def _build(args):
    from cafeslim.bins import make_bins
    from cafeslim.config import TrainConfig
    from cafeslim.data import build_data, dataset_classes
    from cafeslim.models import create
    from cafeslim.pipeline.objects import analyze_info, at_size

    torch.manual_seed(0)
    info = at_size(create(args.model, num_classes=len(dataset_classes("demo"))), args.size)
    a = analyze_info(info)
    space = make_bins(a.graph, a.fm, beta=1.0, offset=1)
    cfg = TrainConfig(batch_size=args.batch, img_size=args.size, device="cpu", seed=0, workers=0)
    return info.model, a.graph, a.fm, space, build_data("demo", info, cfg)


def bench_minmin(args, model, graph, space, data) -> Dict[str, object]:
    x, y = next(iter(data.train))
    nets = {m: Supernet(model, graph, space, batch_candidates=m).train() for m in ("off", "on")}
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    default = MinMinConfig()
    full = MinMinConfig(offset=1, select_batch=1.0, select_dtype=None)  # explicit: not the default
    sides = {"random": ("off", MinMinConfig(offset=0)), "full_fp32": ("off", full),
             "full_fp32_batched": ("on", full)}
    for item in args.selection:
        sb, _, dtype = item.partition(":")
        name = f"sb{float(sb):g}" + (f"_{dtype}" if dtype else "")
        sides[name] = ("off", MinMinConfig(offset=1, select_batch=float(sb), select_dtype=dtype or None))
    if all(cfg != default for _, cfg in sides.values()):
        sides["default"] = ("off", default)

    def run(name: str, seeds: List[int]) -> float:
        mode, cfg = sides[name]
        t = time.perf_counter()
        for s in seeds:
            minmin_step(nets[mode], space, x, y, F.cross_entropy, opt, cfg, np.random.default_rng(s), progress=1.0)
        return time.perf_counter() - t

    for name in sides:
        run(name, [10_000])  # warm-up
    ratios: Dict[str, List[float]] = {n: [] for n in sides if n != "random"}
    times: Dict[str, List[float]] = {n: [] for n in sides}
    for rep in range(args.reps):
        seeds = [rep * 1000 + i for i in range(args.steps)]
        names = list(sides) if rep % 2 == 0 else list(reversed(sides))
        t = {n: run(n, seeds) for n in names}
        for n in sides:
            times[n].append(t[n] / args.steps)
        for n in ratios:
            ratios[n].append(t[n] / t["random"])
        print(f"  rep {rep} (load {os.getloadavg()[0]:.1f}): " + ", ".join(f"{n} {ratios[n][-1]:.2f}" for n in ratios), flush=True)
    return {"minmin_default": {"select_batch": default.select_batch, "select_dtype": default.select_dtype,
                               "side": next(n for n, (m, c) in sides.items() if m == "off" and c == default)},
            **{f"minmin_{n}_over_random": float(np.median(v)) for n, v in ratios.items()},
            **{f"minmin_{n}_step_s": float(np.median(v)) for n, v in times.items()},
            "minmin_batching_error": nets["on"].batching_error}


def bench_search(args, model, graph, fm, space, data) -> Dict[str, object]:
    from cafeslim.bins import parse_budget, random_widths
    from cafeslim.search import Fitness

    new_n = SearchConfig().recal_batches
    sides = {"old": ("off", 20)}
    for n in sorted({*args.recal, new_n} - {20}, reverse=True):
        sides[f"recal{n}"] = ("off", n)
    low = min({*args.recal, new_n})
    sides[f"recal{low}_batched"] = ("on", low)
    fits = {}
    for name, (mode, n) in sides.items():
        net = Supernet(model, graph, space, batch_candidates=mode)
        fits[name] = Fitness(net, space, data.calib, data.val, recal_n=n, flops_model=fm)
    K = random_widths(space, fm, parse_budget("50%", fm.full), args.widths + 1, np.random.default_rng(1))
    for f in fits.values():
        f(K[0])  # warm-up: batches into memory, first plans
    secs: Dict[str, List[float]] = {n: [] for n in sides}
    for i, k in enumerate(K[1:]):
        names = list(sides) if i % 2 == 0 else list(reversed(sides))
        for n in names:
            t = time.perf_counter()
            fits[n](k)
            secs[n].append(time.perf_counter() - t)
        print(f"  width {i}: " + ", ".join(f"{n} {secs[n][-1]:.1f} s" for n in sides), flush=True)
    out = {"search_default_recal_batches": new_n, "search_widths": args.widths,
           "search_batching_error": fits[f"recal{low}_batched"].net.batching_error}
    for n in sides:
        out[f"search_{n}_widths_per_s"] = len(secs[n]) / sum(secs[n])
        if n != "old":
            out[f"search_{n}_over_old"] = float(np.median([o / s for o, s in zip(secs["old"], secs[n])]))
    # The batched side scores exactly what its sequential twin scores.
    seq = fits["old"] if low == 20 else fits[f"recal{low}"]
    out["search_batched_same_scores"] = all(
        seq.cache[tuple(int(v) for v in k)].candidate_top1s
        == fits[f"recal{low}_batched"].cache[tuple(int(v) for v in k)].candidate_top1s for k in K[1:])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="timm:test_resnet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="min-min steps per repetition and side")
    ap.add_argument("--widths", type=int, default=4, help="width vectors per search side (after one warm-up)")
    ap.add_argument("--selection", default="0.5,0.25,1:bfloat16",
                    help="min-min sides besides full-batch fp32: select_batch[:select_dtype], comma-separated")
    ap.add_argument("--recal", default="4,2", help="recalibration-batch sides besides 20")
    ap.add_argument("--skip", default="", help="minmin,search")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    args.selection = [v for v in args.selection.split(",") if v]
    args.recal = [int(v) for v in args.recal.split(",") if v]
    torch.set_num_threads(1)
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    res: Dict[str, object] = {"model": args.model, "size": args.size, "batch": args.batch, "reps": args.reps,
                              "threads": 1, "torch": torch.__version__, "load_before": os.getloadavg()}
    model, graph, fm, space, data = _build(args)
    if "minmin" not in skip:
        res.update(bench_minmin(args, model, graph, space, data))
    if "search" not in skip:
        res.update(bench_search(args, model, graph, fm, space, data))
    res["load_after"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t0
    print(json.dumps(res, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
