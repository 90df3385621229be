"""What a training reports: each epoch's record and the :class:`TrainOutcome` at the end.

After every epoch :func:`end_epoch` measures the model (the EMA weights with ``model_ema``) with
the task's meter (:mod:`cafeslim.tasks`): the primary metric on the holdout, which alone
selects ``best.pt``, and every metric on the test split, which nothing selects on. The record
keys are ``holdout_<metric>`` and ``test_<metric>`` — ``holdout_top1``, ``test_top1`` and
``test_top5`` for classification, as ``metrics.jsonl`` always had.

Example:
    >>> scores(nn.Flatten(), [(torch.eye(2), torch.arange(2))], torch.device("cpu"))
    {'top1': 1.0, 'top5': 1.0}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..metrics import measure
from ..supernet import distributed
from .resume import BEST, save_best


@dataclass
class TrainOutcome:
    """What :func:`train` did.

    Attributes:
        model: the trained model (the EMA weights with ``model_ema``), on CPU, in eval mode.
        epochs: epochs done in total; steps: optimizer steps in total.
        history: the ``metrics.jsonl`` records, one per epoch.
        metric: the task's primary metric (``top1``, ``miou``, ``label_acc``).
        test: every test metric of the task by name, of the returned model on the test split
            (None values without one); :attr:`test_score` is the primary one.
        holdout_score: the primary metric of the returned model on the holdout (None without
            one).
        best_epoch, best_holdout_score: the epoch ``best.pt`` holds and its holdout score
            (None without a holdout).
        test_top1, test_top5, holdout_top1, best_holdout_top1: classification's names of the
            same numbers (None for the other tasks).
        images_per_s: training throughput of this invocation.
        seconds: wall time of this invocation; resumed_from: the step it resumed at, or None.
    """

    model: nn.Module
    epochs: int
    steps: int
    history: List[Dict[str, Any]] = field(default_factory=list)
    metric: str = "top1"
    test: Dict[str, Optional[float]] = field(default_factory=dict)
    holdout_score: Optional[float] = None
    best_epoch: Optional[int] = None
    best_holdout_score: Optional[float] = None
    images_per_s: float = 0.0
    seconds: float = 0.0
    resumed_from: Optional[int] = None

    @property
    def test_score(self) -> Optional[float]:
        """The primary metric on the test split: the number to quote (None without one)."""
        return self.test.get(self.metric)

    @property
    def test_top1(self) -> Optional[float]:
        return self.test.get("top1")

    @property
    def test_top5(self) -> Optional[float]:
        return self.test.get("top5")

    @property
    def holdout_top1(self) -> Optional[float]:
        return self.holdout_score if self.metric == "top1" else None

    @property
    def best_holdout_top1(self) -> Optional[float]:
        return self.best_holdout_score if self.metric == "top1" else None


def scores(model: nn.Module, batches: Iterable[Any], device: torch.device,
           task: Any = None) -> Dict[str, float]:
    """Every metric of the task for ``model`` in eval mode over ``batches``.

    Example:
        >>> scores(nn.Flatten(), [(torch.eye(3), torch.arange(3))], torch.device("cpu"))
        {'top1': 1.0, 'top5': 1.0}
    """
    was = model.training
    model.eval()
    try:
        return measure(model, batches, task, device)[0]
    finally:
        model.train(was)


def mean_loss(losses: List[float], info: distributed.DistInfo) -> float:
    """The epoch's mean training loss; under torchrun over every rank's share of the batches."""
    mean = sum(losses) / max(len(losses), 1)
    if not info.distributed:
        return mean
    means = distributed.all_gather_object(mean)  # one collective per epoch, equal shares
    return sum(means) / len(means)


def end_epoch(run: Any, epoch: int, losses: List[float], lr: float, seen: int,
               seconds: float, test: Any, holdout: Any, out: Optional[Path]) -> Dict[str, Any]:
    """Evaluate after an epoch, keep ``best.pt`` (holdout only) and return the epoch's record.

    ``run`` is the loop's state (model, task, step, best score so far, history).
    """
    model = run.result_model
    record: Dict[str, Any] = {"epoch": epoch + 1, "step": run.step,
                              "loss": mean_loss(losses, run.info), "lr": lr,
                              "img_s": round(seen / max(seconds, 1e-9), 2),
                              "train_s": round(seconds, 3)}
    task = run.task
    key = f"holdout_{task.metric}"
    record[key] = scores(model, holdout, run.device, task)[task.metric] if holdout is not None else None
    values = scores(model, test, run.device, task) if test is not None else {}
    for name in task.metrics:  # classification: test_top1, test_top5
        record[f"test_{name}"] = values.get(name)
    if record[key] is not None and record[key] > run.best:
        run.best, run.best_epoch = record[key], epoch + 1
        if out is not None:
            save_best(out / BEST, model, record)
    run.history.append(record)
    return record


__all__ = ["TrainOutcome", "end_epoch", "mean_loss", "scores"]
