"""Supernet training cost on this CPU, measured side by side (issue 4, "Must show").

Ratios, each from steps interleaved in one run so that load changes hit both sides alike:

(a) a training step of a sub-network at about 50 % FLOPs (uniform width found with FlopsModel,
    run through the supernet) / a training step of the plain full model, same batch;
(b) a min-min step with r = 1 / a random step with r = 0 (the same sampled widths on both
    sides), with full-batch selection and with ``select_batch = 0.25``;
(c) peak memory of supernet (min-min, r = 1) training / plain training of the full model, each
    in its own fresh process: peak resident set size (``VmHWM`` of /proc/self/status), as a
    total and as the growth above the process's size before its first step. The supernet run
    does ``--mem-steps`` random-width steps, then two at the widest width that still has three
    candidates (the most gathered weight). Measured twice: with glibc's default allocator
    settings (what a user gets; tensors whose size changes every step fragment the heap, so
    RSS creeps above the live memory) and with ``MALLOC_MMAP_THRESHOLD_=131072`` (every large
    tensor is its own mapping and goes back to the OS when freed, so RSS tracks live memory).

A step is zero_grad + forward + cross-entropy + backward + SGD (momentum 0.9) step. Every
ratio is the median over repetitions of the paired ratio (both sides measured back to back).

Usage:
    python benchmarks/speed.py                       # resnet50, 128 px, batch 16, 2 threads
    python benchmarks/speed.py --size 160 --reps 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List

# The benchmark machines are shared. Spinning OpenMP workers (the default wait policy) then
# fight other processes for the cores and a step takes 3-4x longer with huge variance; passive
# waiting measures the work itself. Set before torch starts its thread pool; inherited by the
# memory subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cafeslim.bins.make import make_bins  # noqa: E402
from cafeslim.flops import FlopsModel  # noqa: E402
from cafeslim.graph import analyze  # noqa: E402
from cafeslim.models import create  # noqa: E402
from cafeslim.supernet import MinMinConfig, Supernet, minmin_step  # noqa: E402

TARGETS = {"sub50_over_full": 0.65, "minmin_over_random": 1.3, "minmin_sb025_over_random": 1.15,
           "peak_mem_supernet_over_plain": 1.2}


def _setup(args):
    torch.manual_seed(0)
    info = create(args.model, num_classes=1000)
    model = info.model.eval()
    x1 = torch.randn(1, 3, args.size, args.size)
    graph = analyze(model, x1, source=args.model)
    fm = FlopsModel(graph)
    space = make_bins(graph, fm, beta=args.beta)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = Supernet(model, graph, space).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), generator=gen)
    return net, graph, fm, space, x, y


def half_flops_spec(graph, fm, target=0.5):
    """Prefix spec of one uniform width fraction whose FLOPs are closest to ``target``."""
    def spec(f):
        return graph.prefix_spec({g.id: max(g.blocks, int(round(f * g.block_size)) * g.blocks)
                                  for g in graph.searchable})
    lo, hi = 0.05, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if fm.flops(graph.widths_of(spec(mid))) / fm.full < target:
            lo = mid
        else:
            hi = mid
    s = spec((lo + hi) / 2)
    return s, fm.flops(graph.widths_of(s)) / fm.full, (lo + hi) / 2


def _timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_subnet(args, net, graph, fm, x, y) -> Dict[str, object]:
    model = net.model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    spec, ratio, frac = half_flops_spec(graph, fm)

    def full_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def sub_step():
        net.set_subnet(spec)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        net.set_subnet(None)

    for fn in (full_step, sub_step):
        fn()  # warm-up: allocator, oneDNN primitives for these shapes
    full, sub, pairs = [], [], []
    for rep in range(args.reps):
        # Alternate which side goes first, so a load change within a pair favours neither.
        order = (full_step, sub_step) if rep % 2 == 0 else (sub_step, full_step)
        t = {fn: _timed(fn) for fn in order}
        full.append(t[full_step])
        sub.append(t[sub_step])
        pairs.append(t[sub_step] / t[full_step])
    return {"sub50_over_full": float(np.median(pairs)), "sub_flops_ratio": ratio, "width_fraction": frac,
            "full_step_s": float(np.median(full)), "sub_step_s": float(np.median(sub))}


def bench_minmin(args, net, space, x, y) -> Dict[str, object]:
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    configs = {"random": MinMinConfig(offset=0), "minmin": MinMinConfig(offset=1),
               "minmin_sb025": MinMinConfig(offset=1, select_batch=0.25),
               "minmin_sb0125": MinMinConfig(offset=1, select_batch=0.125)}
    if args.select_dtype:
        configs["minmin_lp"] = MinMinConfig(offset=1, select_dtype=args.select_dtype)
        configs["minmin_sb025_lp"] = MinMinConfig(offset=1, select_batch=0.25, select_dtype=args.select_dtype)

    def run(cfg: MinMinConfig, seeds: List[int]) -> float:
        total = 0.0
        for s in seeds:
            total += _timed(lambda: minmin_step(net, space, x, y, F.cross_entropy, opt, cfg,
                                                np.random.default_rng(s), progress=1.0))
        return total

    run(configs["minmin"], [10_000])  # warm-up
    times: Dict[str, List[float]] = {k: [] for k in configs}
    ratios: Dict[str, List[float]] = {n: [] for n in configs if n != "random"}
    for rep in range(args.reps):
        # The same width vectors (seeds) for every configuration of a repetition: the cost of
        # a step depends strongly on its widths.
        seeds = [rep * 1000 + i for i in range(args.steps)]
        names = list(configs) if rep % 2 == 0 else list(reversed(configs))
        t = {n: run(configs[n], seeds) for n in names}
        for n in configs:
            times[n].append(t[n] / args.steps)
        for n in ratios:
            ratios[n].append(t[n] / t["random"])
    return {**{f"{n}_over_random": float(np.median(v)) for n, v in ratios.items()},
            **{f"{n}_step_s": float(np.median(v)) for n, v in times.items()}}


def bench_overheads(args, net, space, x) -> Dict[str, object]:
    """Per-spec costs of the supernet: the plan (indices, attributes), the weight gather."""
    rng = np.random.default_rng(123)
    prep, gather, fwd = [], [], []
    for k in space.sample(rng, args.reps):
        spec = space.candidates(k)[-1]  # a locally free (scattered) candidate
        net._prepared.clear()
        prep.append(_timed(lambda: net.set_subnet(spec)))
        with torch.inference_mode():
            gather.append(_timed(net.sliced))
            fwd.append(_timed(lambda: net(x)))
    net.set_subnet(None)
    return {"prepare_ms": 1e3 * float(np.median(prep)), "gather_ms": 1e3 * float(np.median(gather)),
            "inference_forward_ms": 1e3 * float(np.median(fwd))}


# ----------------------------------------------------------------------------- memory

def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args) -> None:
    """Run in a fresh process: train ``args.memory_child`` and print its peak RSS as JSON."""
    net, graph, fm, space, x, y = _setup(args)
    model = net.model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    base = _rss_kib("VmRSS")
    if args.memory_child == "plain":
        for _ in range(args.mem_steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    else:
        rng = np.random.default_rng(0)
        cfg = MinMinConfig(offset=1)
        for _ in range(args.mem_steps):
            minmin_step(net, space, x, y, F.cross_entropy, opt, cfg, rng, progress=1.0)

        # The worst case: the widest width that still has three candidates (every group one
        # bin short of full), so gathered weight copies are nearly full size.
        class Widest:
            def sample(self, rng, n=1):
                return (space.num_bins - 1).reshape(1, -1)

            def __getattr__(self, name):
                return getattr(space, name)

        for _ in range(2):
            minmin_step(net, Widest(), x, y, F.cross_entropy, opt, cfg, rng, progress=1.0)
    print(json.dumps({"peak_kib": _rss_kib("VmHWM"), "base_kib": base}))


def bench_memory(args) -> Dict[str, object]:
    """Peak RSS of plain and supernet training, each in a fresh process, with glibc's default
    allocator settings and with a fixed mmap threshold (see the module docstring of the docs)."""
    out: Dict[str, object] = {}
    for alloc, env in (("default", {}), ("mmap", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        peaks = {}
        for mode in ("plain", "supernet"):
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", mode,
                   "--model", args.model, "--size", str(args.size), "--batch", str(args.batch),
                   "--beta", str(args.beta), "--mem-steps", str(args.mem_steps),
                   "--threads", str(args.threads)]
            if args.channels_last:
                cmd.append("--channels-last")
            res = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env})
            peaks[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        p, s = peaks["plain"], peaks["supernet"]
        tag = "" if alloc == "default" else "_mmap"
        out.update({
            f"peak_mem_supernet_over_plain{tag}": s["peak_kib"] / p["peak_kib"],
            f"peak_growth_supernet_over_plain{tag}": (s["peak_kib"] - s["base_kib"]) / (p["peak_kib"] - p["base_kib"]),
            f"plain_peak_mib{tag}": p["peak_kib"] / 1024, f"supernet_peak_mib{tag}": s["peak_kib"] / 1024,
            f"plain_base_mib{tag}": p["base_kib"] / 1024, f"supernet_base_mib{tag}": s["base_kib"] / 1024})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tv:resnet50")
    ap.add_argument("--size", type=int, default=128, help="input side in pixels")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beta", type=float, default=1.0, help="β of the bins (Eq. 9)")
    ap.add_argument("--reps", type=int, default=7, help="repetitions (medians are reported)")
    ap.add_argument("--steps", type=int, default=3, help="min-min steps per repetition and side")
    ap.add_argument("--mem-steps", type=int, default=8, help="random-width steps before the widest")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--select-dtype", default="bfloat16",
                    help="also measure min-min with selection forwards in this dtype ('' to skip)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: subnet,overheads,minmin,memory")
    ap.add_argument("--json", default="", help="also write the results to this file")
    ap.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    res: Dict[str, object] = {"model": args.model, "size": args.size, "batch": args.batch,
                              "threads": args.threads, "reps": args.reps, "steps": args.steps,
                              "channels_last": args.channels_last, "torch": torch.__version__,
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    net, graph, fm, space, x, y = _setup(args)
    res["bins"] = int(space.num_bins.sum())
    if "subnet" not in skip:
        res.update(bench_subnet(args, net, graph, fm, x, y))
        print(f"(a) sub-network at {100 * res['sub_flops_ratio']:.1f}% FLOPs / full step: "
              f"{res['sub50_over_full']:.3f}  (target <= {TARGETS['sub50_over_full']})", flush=True)
    if "overheads" not in skip:
        res.update(bench_overheads(args, net, space, x))
        print(f"    per new spec: plan {res['prepare_ms']:.1f} ms, weight gather {res['gather_ms']:.1f} ms; "
              f"inference forward {res['inference_forward_ms']:.0f} ms", flush=True)
    if "minmin" not in skip:
        res.update(bench_minmin(args, net, space, x, y))
        print(f"(b) min-min r=1 / random r=0: {res['minmin_over_random']:.3f} (target <= "
              f"{TARGETS['minmin_over_random']}); select_batch 0.25: {res['minmin_sb025_over_random']:.3f} "
              f"(target <= {TARGETS['minmin_sb025_over_random']})", flush=True)
        print(f"    select_batch 0.125: {res['minmin_sb0125_over_random']:.3f}", flush=True)
        if args.select_dtype:
            print(f"    selection in {args.select_dtype}: full batch {res['minmin_lp_over_random']:.3f}, "
                  f"select_batch 0.25: {res['minmin_sb025_lp_over_random']:.3f}", flush=True)
    if "memory" not in skip:
        res.update(bench_memory(args))
        print(f"(c) peak RSS supernet / plain: {res['peak_mem_supernet_over_plain']:.3f} "
              f"(target <= {TARGETS['peak_mem_supernet_over_plain']}); growth above the "
              f"pre-training size: {res['peak_growth_supernet_over_plain']:.3f}; with a fixed mmap "
              f"threshold (live memory): {res['peak_mem_supernet_over_plain_mmap']:.3f} / "
              f"{res['peak_growth_supernet_over_plain_mmap']:.3f}", flush=True)
    res["wall_s"] = time.perf_counter() - t0
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
