"""``cafeslim train`` images/s against a plain timm-style loop on the same slimmed module.

Both sides train a deep copy of the same slimmed network (the model's channels kept at
``--fraction`` in every searchable group, slimmed with :func:`cafeslim.slim`) on the same
in-memory batches with the same optimizer (:func:`cafeslim.training.recipe.make_optimizer`:
SGD, Nesterov, the same parameter groups) and per-step schedule, in one process, one thread,
interleaved round by round (the order alternates) so the load of a shared machine hits both
alike. The plain side is what a timm ``train.py`` step does: zero_grad, forward, label-smoothed
cross-entropy, backward, step, schedule step. The cafeslim side is :func:`cafeslim.train` for
one epoch with no output folder and no test split (its ``train_s``: the epoch's steps only).
Target: ratio ≥ 0.95 (no supernet overhead is left in a slimmed model).

    python benchmarks/train_speed.py                    # timm:test_resnet, 64 px, b 64
    python benchmarks/train_speed.py --model tv:resnet18 --img-size 96 --batch 32 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch


def slimmed(name: str, fraction: float, size: int) -> torch.nn.Module:
    """``name`` with ``fraction`` of every searchable group's channels (the first ones)."""
    from cafeslim import analyze, slim
    from cafeslim.models import create
    from cafeslim.pipeline.objects import at_size

    info = at_size(create(name, num_classes=10), size)
    graph = analyze(info.model, info.example_input())
    widths = {g: max(1, round(fraction * c)) for g, c in graph.full_widths().items()}
    return slim(info.model, graph, graph.prefix_spec(widths))


def plain_epoch(model: torch.nn.Module, batches: list, cfg) -> float:
    """One epoch of a plain loop; its seconds."""
    from cafeslim.training.recipe import make_optimizer, make_scheduler

    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, len(batches))
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def cafeslim_epoch(model: torch.nn.Module, batches: list, cfg) -> float:
    from cafeslim.training import train

    return float(train(model, batches, cfg, progress=False).history[0]["train_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="timm:test_resnet")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from cafeslim.config import RetrainConfig

    cfg = RetrainConfig(epochs=1, batch_size=args.batch, device="cpu", workers=0,
                        warmup_epochs=0.0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g),
                torch.randint(0, 10, (args.batch,), generator=g)) for _ in range(args.batches)]
    small = slimmed(args.model, args.fraction, args.img_size)
    params = sum(p.numel() for p in small.parameters())
    plain_epoch(copy.deepcopy(small), batches[:2], cfg)  # warm-up of both paths
    cafeslim_epoch(copy.deepcopy(small), batches[:2], cfg)
    images = args.batch * args.batches
    ratios, ours, theirs = [], [], []
    for r in range(args.rounds):
        sides = [("cafeslim", cafeslim_epoch), ("plain", plain_epoch)]
        got = {}
        for name, fn in (sides if r % 2 == 0 else sides[::-1]):
            got[name] = fn(copy.deepcopy(small), batches, cfg)
        ours.append(images / got["cafeslim"])
        theirs.append(images / got["plain"])
        ratios.append(got["plain"] / got["cafeslim"])
        print(f"round {r + 1}: cafeslim train {ours[-1]:.1f} img/s, plain loop {theirs[-1]:.1f} "
              f"img/s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"{args.model} at {args.fraction:.2f} of every group ({params / 1e3:.0f}K params), "
          f"{args.img_size} px, batch {args.batch}, {args.batches} batches/round, 1 thread, "
          f"load average {os.getloadavg()[0]:.1f}: median cafeslim {statistics.median(ours):.1f} "
          f"img/s, plain {statistics.median(theirs):.1f} img/s, median paired ratio "
          f"{statistics.median(ratios):.3f} (target ≥ 0.95)")


if __name__ == "__main__":
    main()
