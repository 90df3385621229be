"""``--method random``: the paper's Random baseline (section 4), trained like everything else.

For every budget, ``random_n`` width vectors are drawn uniformly inside the budget window with
the search's own window sampler (:func:`~cafeslim.bins.budget.random_widths`, on the same bins
CafeNet searches), each is built with the family's own initialisation at its widths
(:func:`~cafeslim.training.init.scratch_model`), trained stand-alone for ``random_epochs`` with
the ``cafeslim train`` recipe (:func:`cafeslim.training.train`, :class:`RetrainConfig`
defaults with the schedule compressed to the shorter training) on the run's D_tr, and scored on
the run's D_val after recalibrating its BatchNorm statistics on ``recal_batches`` training
batches, as the search scores its widths (after one short epoch the running statistics still
lag the weights): that D_val top-1 is the candidate's *selection score*. The best
score wins. No supernet is trained, so the run folder looks like a ``--method uniform`` one
(``result.json``, ``search.jsonl``, no ``last.pt``): ``export``, ``train`` and ``eval`` work
on it unchanged, and the accuracy to quote comes from ``cafeslim train RUN`` + ``eval``.

**Resume.** Each candidate trains in ``random/<budget>-<i>/`` (its own ``last.pt``, so a kill
mid-candidate resumes it exactly); a finished candidate's score is appended to
``search.jsonl`` and its checkpoints are deleted, so ``--resume`` never trains it again.

Example:
    >>> s = RunSettings("timm:test_resnet", search=SearchConfig(flops="50%", method="random",
    ...                                                          random_n=4))
    >>> run_search(s, "runs/r").result["budgets"][0]["top1"]             # doctest: +SKIP
    0.71
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..config import RetrainConfig
from ..metrics import measure
from ..errors import ConfigError
from .objects import Built
from .rundir import SEARCH_LOG, write_text

RANDOM_DIR = "random"
SEARCHER = "random-trained"
_FROM_RUN = ("batch_size", "device", "workers", "seed", "val_split", "img_size", "amp")


def retrain_config(b: Built) -> RetrainConfig:
    """The ``cafeslim train`` recipe for one candidate: its defaults, run's data settings.

    The epochs are ``random_epochs``; warmup keeps the default recipe's share of the schedule
    (1 of 15 epochs), so that a one-epoch training still decays its learning rate.

    Example:
        >>> retrain_config(b).epochs == b.settings.search.random_epochs   # doctest: +SKIP
        True
    """
    t, s, base = b.settings.train, b.settings.search, RetrainConfig()
    # Where and on what it runs comes from the run; the optimisation recipe stays train's.
    here = {k: getattr(t, k) for k in _FROM_RUN}
    return RetrainConfig(**here, epochs=s.random_epochs, task=b.settings.task,
                         warmup_epochs=base.warmup_epochs * s.random_epochs / base.epochs)


def _done_records(run_dir: Path, resume: bool) -> Dict[Tuple[int, int], Dict[str, Any]]:
    """Finished candidates of an interrupted run, by (budget index, candidate index)."""
    path = run_dir / SEARCH_LOG
    if not (resume and path.exists()):
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            done[(int(rec["budget_index"]), int(rec["candidate_index"]))] = rec
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill: that candidate trains again
    return done


def train_candidate(b: Built, k: np.ndarray, cfg: RetrainConfig, folder: Path, *,
                    seed: int, resume: bool, name: str) -> Dict[str, Any]:
    """Train width vector ``k`` stand-alone from scratch; its D_val score and training facts.

    Example:
        >>> train_candidate(b, K[0], retrain_config(b), run / "random/0-0", seed=1,
        ...                 resume=False, name="c0")["top1"]                # doctest: +SKIP
        0.64
    """
    from ..models import create
    from ..supernet import distributed
    from ..supernet.train import seed_everything
    from ..training import train
    from ..training.init import scratch_model
    from ..training.loop import LAST

    spec = b.space.fixed_spec(k)
    seed_everything(seed)  # the candidate's own initial weights
    fresh = create(b.settings.model, num_classes=b.data.num_classes).model
    model = scratch_model(fresh, b.graph, spec)
    t0 = time.perf_counter()
    # The test split is not touched: the baseline selects on D_val, as the search does.
    out = train(model, b.data, cfg, test=(), holdout=b.data.val, out_dir=folder,
                resume=resume and (folder / LAST).exists(), progress=False, name=name)
    last = out.history[-1] if out.history else {}
    running = float(out.holdout_score)
    # After a short training the running BatchNorm statistics still lag the weights, so the
    # score is taken, as the search's, after recalibrating them on the same batches.
    device = distributed.current(cfg.device).device
    small = out.model.to(device)
    recalibrate(small, b.data.calib, b.settings.search.recal_batches, device)
    values, _ = measure(small.eval(), b.data.val, b.settings.task, device)
    top1 = values[out.metric]
    small.cpu()
    return {"top1": float(top1), "top1_running_bn": running, "loss": last.get("loss"),
            "train_s": round(time.perf_counter() - t0, 2), "spec": spec}


def recalibrate(model: Any, batches: Any, max_batches: int, device: Any = "cpu") -> None:
    """Re-measure a plain model's BatchNorm running statistics (cumulative average).

    Example:
        >>> recalibrate(small, data.calib, 20, "cpu")                       # doctest: +SKIP
    """
    import torch

    from ..supernet.bn import _bn_only_train
    from ..supernet.supernet import bn_modules

    bns = [m for _, m in bn_modules(model)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
    try:
        with torch.no_grad(), _bn_only_train(model):
            for n, (images, _) in enumerate(batches):
                if n >= max_batches:
                    break
                model(images.to(device))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


class _Bar:
    """One rich bar over all candidates: done / total, the last and the best score, ETA."""

    def __init__(self, enabled: bool, total: int, done: int, label: str) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn(f"[bold]random {label}"), BarColumn(bar_width=20),
                                MofNCompleteColumn(), TextColumn(
                                    "candidates  last {task.fields[last]}  best {task.fields[best]}"
                                    " (D_val score)"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task("random", total=total, completed=done, last="-", best="-")
            self.bar.start()

    def update(self, done: int, last: float, best: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, last=f"{last:.2%}", best=f"{best:.2%}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def random_method(b: Built, run_dir: Path, *, resume: bool, progress: bool,
                  callback: Optional[Any], device: Any) -> Dict[str, Any]:
    """The Random baseline over every budget; the ``METHODS`` entry of ``--method random``.

    ``callback("random", n)`` runs after the n-th finished candidate (tests interrupt there).

    Raises:
        ConfigError: under torchrun (each candidate is one process's stand-alone training), or
            without a D_val to score on.
        BudgetError: a window no width vector of the bins lands in.
    """
    from ..bins import random_widths
    from ..data.loaders import mix_seed
    from ..search import SearchResult
    from ..search.fitness import FitnessResult
    from ..supernet import distributed

    if distributed.current(b.settings.train.device).world_size > 1:
        raise ConfigError("--method random trains its candidates one process at a time; run it "
                          "without torchrun")
    if not b.data.sizes.get("val"):
        raise ConfigError("--method random scores its candidates on D_val: val_split must be > 0")
    s, seed = b.settings.search, b.settings.train.seed
    cfg, done = retrain_config(b), _done_records(run_dir, resume)
    draws = [random_widths(b.space, b.fm, budget, s.random_n,
                           np.random.default_rng(mix_seed(seed, 0x5A4D, j)), low=s.low)
             for j, budget in enumerate(b.budgets)]
    lines: List[str] = []
    bar = _Bar(progress, s.random_n * len(b.budgets), 0, ",".join(s.budgets))
    results, finished, best_seen = [], 0, float("nan")
    try:
        for j, (budget, K) in enumerate(zip(b.budgets, draws)):
            records: List[Dict[str, Any]] = []
            for i, k in enumerate(K):
                rec = done.get((j, i))
                if rec is None or rec.get("k") != [int(v) for v in k]:
                    rec = _train_record(b, j, i, k, budget, cfg, run_dir, seed, resume)
                records.append(rec)
                lines.append(json.dumps(rec))
                write_text(run_dir / SEARCH_LOG, "\n".join(lines))  # atomic: a kill tears nothing
                finished += 1
                best_seen = rec["top1"] if not rec["top1"] <= best_seen else best_seen
                bar.update(finished, rec["top1"], best_seen)
                if callback is not None:
                    callback("random", finished)
            win = max(range(len(records)), key=lambda n: (records[n]["top1"], -n))
            k = tuple(records[win]["k"])
            best = FitnessResult(k, records[win]["top1"], b.space.fixed_spec(k),
                                 (records[win]["top1"],), records[win]["flops"])
            results.append(SearchResult(budget, k, best, records, SEARCHER))
    finally:
        bar.close()
    shutil.rmtree(run_dir / RANDOM_DIR, ignore_errors=True)  # per-candidate checkpoints
    return {"results": results, "checkpoints": [None] * len(results), "train": None,
            "search": {"evaluated": sum(len(r.history) for r in results),
                       "candidates": s.random_n, "epochs_each": s.random_epochs,
                       "train_s": round(sum(r["train_s"] for res in results
                                            for r in res.history), 2)}}


def _train_record(b: Built, j: int, i: int, k: np.ndarray, budget: float, cfg: RetrainConfig,
                  run_dir: Path, seed: int, resume: bool) -> Dict[str, Any]:
    """Train candidate ``i`` of budget ``j`` and make its ``search.jsonl`` record."""
    from ..bins import space_flops
    from ..data.loaders import mix_seed

    folder = run_dir / RANDOM_DIR / f"{j}-{i}"
    out = train_candidate(b, k, cfg, folder, seed=mix_seed(seed, j, i) % 2**31,
                          resume=resume, name=f"{b.info.name}:random:{j}-{i}")
    shutil.rmtree(folder, ignore_errors=True)  # its score is recorded: never trained again
    return {"index": i, "searcher": SEARCHER, "budget": budget, "generation": 0,
            "budget_index": j, "candidate_index": i, "k": [int(v) for v in k],
            "top1": out["top1"], "top1_running_bn": out["top1_running_bn"],
            "flops": float(space_flops(b.space, b.fm, k)[0]),
            "candidate": 0, "candidate_top1s": [out["top1"]], "loss": out["loss"],
            "train_s": out["train_s"], "epochs": cfg.epochs, "cached": False}


__all__ = ["RANDOM_DIR", "SEARCHER", "random_method", "retrain_config", "train_candidate"]
