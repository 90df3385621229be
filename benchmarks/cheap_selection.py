"""How much cheaper can min-min selection and max-max recalibration be? (issue 11, items 2-3)

One run, one process, one thread:

1. **Selection agreement.** A supernet (default ``timm:test_resnet`` at 64 px, demo data, batch
   64, offset r = 1) is min-min trained with full-batch fp32 selection. After ``--warmup``
   steps (a few epochs: partly trained), every further step also computes the candidates'
   selection losses on the first half / quarter / eighth of the batch and in bf16 (autocast),
   and records whether their argmin is the full-batch fp32 argmin, and the regret (full-batch
   loss of the chosen candidate minus the best one) when it is not.
2. **Recalibration and D_val size.** On the trained supernet, a fixed set of ``--widths``
   width vectors of a 50 % FLOPs window is scored (Eq. 13) with 1, 2, 4, 8 and 20
   recalibration batches and on the first 25 %, 50 % and 100 % of D_val; Kendall τ-b of each
   ranking against the 20-batch, full-D_val one. The cumulative BatchNorm average over b
   batches is the mean of the per-batch statistics (``momentum=None``), so each candidate is
   forwarded once per batch and the b-batch statistics are prefix means: exact, and 20
   recalibration forwards per candidate instead of 35.

Usage:
    python benchmarks/cheap_selection.py --steps 300 --warmup 100 --widths 24 \
        --json benchmarks/results/cheap_selection.json --png docs/img/recal_tau.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SETTINGS = {"sb0.5": (0.5, None), "sb0.25": (0.25, None), "sb0.125": (0.125, None),
            "bf16": (1.0, "bfloat16"), "bf16_sb0.25": (0.25, "bfloat16")}
RECAL = (1, 2, 4, 8, 20)
VAL_FRACTIONS = (0.25, 0.5, 1.0)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall τ-b (ties count for neither side), the rank agreement of two score lists."""
    from scipy.stats import kendalltau

    tau = kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic
    return float(tau) if np.isfinite(tau) else 0.0


def build(args):
    from cafeslim.bins import make_bins
    from cafeslim.config import TrainConfig
    from cafeslim.data import build_data, dataset_classes
    from cafeslim.models import create
    from cafeslim.pipeline.objects import analyze_info, at_size
    from cafeslim.supernet import Supernet

    torch.manual_seed(args.seed)
    info = create(args.model, num_classes=len(dataset_classes(args.data)))
    info = at_size(info, args.size)
    a = analyze_info(info)
    space = make_bins(a.graph, a.fm, beta=1.0, offset=1)
    cfg = TrainConfig(batch_size=args.batch, img_size=args.size, device="cpu", seed=args.seed, workers=0)
    data = build_data(args.data, info, cfg)
    net = Supernet(info.model, a.graph, space, batch_candidates="off").train()
    return net, space, a.fm, data


def agreement(args, net, space, data) -> Dict[str, object]:
    """Train with full-batch fp32 selection; compare the cheaper selections' argmin to it."""
    from cafeslim.config import MinMinConfig
    from cafeslim.supernet.minmin import _selection_losses, _train_one, step_candidates

    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    full_cfg = MinMinConfig(offset=1)
    cfgs = {n: MinMinConfig(offset=1, select_batch=sb, select_dtype=dt) for n, (sb, dt) in SETTINGS.items()}
    agree = {n: [] for n in cfgs}
    regret = {n: [] for n in cfgs}
    losses, step, t0 = [], 0, time.perf_counter()
    while step < args.warmup + args.steps:
        for x, y in data.train:
            if step >= args.warmup + args.steps:
                break
            k = tuple(int(v) for v in space.sample(rng, 1)[0])
            cands = step_candidates(space, k, full_cfg, rng)
            i = 0
            if len(cands) > 1:
                full = _selection_losses(net, cands, x, y, F.cross_entropy, full_cfg, None)
                i = int(full.argmin())
                if step >= args.warmup:
                    for n, c in cfgs.items():
                        j = int(_selection_losses(net, cands, x, y, F.cross_entropy, c, None).argmin())
                        agree[n].append(j == i)
                        # Relative regret: how much worse (full-batch fp32 loss) the pick is.
                        regret[n].append(float((full[j] - full[i]) / full[i]))
            opt.zero_grad(set_to_none=True)
            losses.append(_train_one(net, net, cands[i], x, y, F.cross_entropy, None, None, sync=True))
            opt.step()
            step += 1
            if step % 25 == 0:
                agreed = ", ".join(f"{n} {np.mean(v):.2f}" for n, v in agree.items() if v)
                print(f"step {step}: loss {np.mean(losses[-50:]):.3f} ({time.perf_counter() - t0:.0f} s) {agreed}",
                      flush=True)
    net.set_subnet(None)
    rows = {n: {"agreement": float(np.mean(agree[n])), "steps": len(agree[n]),
                "mean_regret": float(np.mean(regret[n])),
                "max_regret": float(np.max(regret[n])) if regret[n] else 0.0} for n in cfgs}
    return {"selection": rows, "train_loss_last50": float(np.mean(losses[-50:])),
            "train_steps": step, "train_s": time.perf_counter() - t0}


def _prefix_mean(per_batch: List[Dict[str, torch.Tensor]], b: int) -> Dict[str, torch.Tensor]:
    out = {}
    for q, v in per_batch[0].items():
        if v.is_floating_point():
            out[q] = torch.stack([s[q] for s in per_batch[:b]]).mean(0)
        else:
            out[q] = torch.full_like(v, b)  # num_batches_tracked
    return out


def recalibration(args, net, space, fm, data) -> Dict[str, object]:
    """Rank fixed width vectors with fewer recalibration batches / less D_val."""
    from cafeslim.bins import parse_budget, random_widths
    from cafeslim.search import Fitness
    from cafeslim.supernet import recalibrate_bn

    K = random_widths(space, fm, parse_budget("50%", fm.full), args.widths, np.random.default_rng(args.seed + 1))
    helper = Fitness(net, space, data.calib, data.val, recal_n=max(RECAL))
    calib = list(helper.recal)  # the same 20 batches in the same order for every candidate
    val = list(helper.val)
    scores = {(b, f): [] for b in RECAL for f in VAL_FRACTIONS}
    t0 = time.perf_counter()
    for w, k in enumerate(K):
        cand = {key: [] for key in scores}
        for spec in helper.candidate_specs(k):
            per_batch = [dict(recalibrate_bn(net, spec, [batch], max_batches=1)) for batch in calib]
            for b in RECAL:
                net.set_bn_stats(spec, _prefix_mean(per_batch, b))
                hits = _hits(net, spec, val)
                for f in VAL_FRACTIONS:
                    n = max(1, int(round(f * hits.numel())))
                    cand[(b, f)].append(float(hits[:n].float().mean()))
        for key, tops in cand.items():
            scores[key].append(max(tops))  # Eq. 13: the best candidate's top-1
        print(f"width {w + 1}/{len(K)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    ref = scores[(max(RECAL), 1.0)]
    taus = {f"{b}x{f}": kendall_tau(scores[(b, f)], ref) for b in RECAL for f in VAL_FRACTIONS}
    return {"recal_tau": taus, "widths": len(K), "val_images": sum(int(y.numel()) for _, y in val),
            "recal_batch": int(calib[0][0].shape[0]), "recal_s": time.perf_counter() - t0,
            "scores": {f"{b}x{f}": v for (b, f), v in scores.items()}}


def _hits(net, spec, val) -> torch.Tensor:
    """Per-image correctness of ``spec`` on D_val, in eval mode with its stored statistics."""
    modes = [(m, m.training) for m in net.modules()]
    out = []
    try:
        net.eval()
        net.set_subnet(spec)
        with torch.inference_mode():
            for x, y in val:
                out.append(net(x).argmax(1) == y)
    finally:
        net.set_subnet(None)
        for m, mode in modes:
            m.training = mode
    return torch.cat(out)


def plot(res: Dict[str, object], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = res["recal"]["recal_tau"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for f in VAL_FRACTIONS:
        ax.plot(RECAL, [taus[f"{b}x{f}"] for b in RECAL], marker="o",
                label=f"D_val {int(f * res['recal']['val_images'])} images")
    ax.set_xscale("log")
    ax.set_xticks(RECAL, [str(b) for b in RECAL])
    ax.set_xlabel(f"recalibration batches (of {res['recal']['recal_batch']} images)")
    ax.set_ylabel("Kendall τ vs 20 batches, full D_val")
    ax.set_title(f"{res['model']} {res['size']}px, {res['recal']['widths']} widths", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="timm:test_resnet")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100, help="training steps before measuring")
    ap.add_argument("--steps", type=int, default=300, help="steps measured (after the warm-up)")
    ap.add_argument("--widths", type=int, default=24, help="width vectors ranked in part 2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="'recal' to skip part 2")
    ap.add_argument("--json", default="")
    ap.add_argument("--png", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net, space, fm, data = build(args)
    res: Dict[str, object] = {"model": args.model, "data": args.data, "size": args.size, "batch": args.batch,
                              "warmup": args.warmup, "steps": args.steps, "load_before": os.getloadavg()}
    res.update(agreement(args, net, space, data))
    print(json.dumps(res["selection"], indent=1), flush=True)
    if "recal" not in args.skip:
        res["recal"] = recalibration(args, net, space, fm, data)
        print(json.dumps(res["recal"]["recal_tau"], indent=1), flush=True)
        if args.png:
            plot(res, args.png)
    res["wall_s"] = time.perf_counter() - t0
    res["load_after"] = os.getloadavg()
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
