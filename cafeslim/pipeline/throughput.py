"""Search throughput: width vectors scored per second, and where the time goes.

``python -m cafeslim.pipeline.throughput --model timm:test_resnet --img-size 64`` builds the model,
its bins and an (untrained: speed does not depend on the weights) supernet on the demo data,
scores ``--widths`` random width vectors of a 50 % FLOPs window with :class:`~cafeslim.search.Fitness`
and prints one JSON line per setting (offset r, torch threads): widths/s, candidates/s and
the shares of gather-plan preparation, BN recalibration and D_val evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional, Sequence

import numpy as np
import torch


def measure_throughput(model: str = "timm:test_resnet", img_size: Optional[int] = 64, widths: int = 10,
                       recal_n: int = 20, eval_n: Optional[int] = None, offsets: Sequence[int] = (1, 0),
                       threads: Sequence[int] = (1, 2), batch_size: int = 64, budget: str = "50%",
                       seed: int = 0) -> list:
    """Score ``widths`` random vectors for every (offset, threads) setting; one dict each.

    The first vector of each setting is a warm-up (first calls allocate and build plans) and
    is not counted.

    Example:
        >>> rows = measure_throughput("timm:test_resnet", 64, widths=4)      # doctest: +SKIP
        >>> rows[0]["widths_per_s"] > 0                                      # doctest: +SKIP
        True
    """
    from ..bins import make_bins, parse_budget, random_widths
    from ..config import TrainConfig
    from ..data import build_data, dataset_classes
    from ..models import create
    from ..search import Fitness, FitnessStats
    from ..supernet import Supernet
    from .objects import analyze_info, at_size

    torch.manual_seed(seed)
    info = create(model, num_classes=len(dataset_classes("demo")))
    if img_size:
        info = at_size(info, img_size)
    a = analyze_info(info)
    graph, fm = a.graph, a.fm
    cfg = TrainConfig(batch_size=batch_size, img_size=img_size, device="cpu", seed=seed)
    data = build_data("demo", info, cfg)
    rows = []
    for r in offsets:
        space = make_bins(graph, fm, beta=1.0, offset=r)
        K = random_widths(space, fm, parse_budget(budget, fm.full), widths + 1, np.random.default_rng(seed))
        for th in threads:
            torch.set_num_threads(int(th))
            net = Supernet(info.model, graph, space)
            fit = Fitness(net, space, data.calib, data.val, recal_n=recal_n, eval_n=eval_n, flops_model=fm)
            fit(K[0])                      # warm-up, and loads the batches into memory
            fit.stats = FitnessStats()
            t0 = time.perf_counter()
            for k in K[1:]:
                fit(k)
            wall = time.perf_counter() - t0
            s = fit.stats.summary()
            rows.append({"model": model, "img_size": img_size, "offset": r, "threads": th,
                         "groups": len(space.groups), "recal_batches": recal_n,
                         "recal_images": fit.stats.recal_images // max(fit.stats.candidates, 1),
                         "val_images": fit.stats.eval_images // max(fit.stats.candidates, 1),
                         "widths": s["widths"], "wall_s": round(wall, 3),
                         "widths_per_s": round(s["widths"] / wall, 3),
                         "candidates_per_s": round(s["candidates"] / wall, 3),
                         "prepare_share": round(s["prepare_share"], 3),
                         "recal_share": round(s["recal_share"], 3),
                         "eval_share": round(s["eval_share"], 3),
                         "load_avg": round(os.getloadavg()[0], 2)})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="timm:test_resnet")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--widths", type=int, default=10)
    p.add_argument("--recal-batches", type=int, default=20)
    p.add_argument("--eval-batches", type=int, default=None)
    p.add_argument("--offsets", default="1,0")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args(argv)
    rows = measure_throughput(a.model, a.img_size, a.widths, a.recal_batches, a.eval_batches,
                              [int(v) for v in a.offsets.split(",")], [int(v) for v in a.threads.split(",")],
                              a.batch_size)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
