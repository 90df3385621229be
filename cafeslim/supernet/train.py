"""Supernet training with min-min steps (Eq. 11-12): schedule, logging, checkpoints, resume.

:func:`train_supernet` trains a :class:`~cafeslim.supernet.Supernet` on a
:class:`~cafeslim.data.Data`: SGD with momentum, per-step cosine learning rate after a linear
warmup, weight decay on weights only (never on norms and biases, whose decay only shrinks the
scale they exist to learn), the task's loss (:meth:`cafeslim.tasks.Task.loss_fn`: label-smoothed
cross-entropy for classification), optional AMP and channels-last.
The run folder around it (model, bins, ``config.yaml``) is :mod:`cafeslim.pipeline`'s.

Run directory (DESIGN.md, "Run directory"): ``last.pt`` (written atomically every
``ckpt_every`` steps, at the end of every epoch, at the end of training and on Ctrl-C),
``metrics.jsonl`` (one JSON line per ``log_every`` steps).

**Exact resume.** A resumed run produces bit-identical weights to an uninterrupted one (on CPU;
tested with SIGKILL at a random step): the checkpoint restores model, optimizer, scheduler,
GradScaler and every RNG, and the data order and augmentation are pure functions of
(seed, epoch, position) (:mod:`cafeslim.data.loaders`). ``metrics.jsonl`` lines after the
checkpoint's step are dropped on resume, so the log reads as one run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig, changed_settings, to_dict
from ..errors import CheckpointError, OutputExistsError
from . import distributed
from .checkpoint import capture_rng, fingerprint, load_checkpoint, restore_rng, save_checkpoint
from .minmin import StepStats, minmin_step
from .schedule import WarmupCosine, amp_setup, param_groups, total_steps
from .train_log import Interrupts, MetricsLog

__all__ = ["CHECKPOINT", "METRICS", "TrainResult", "WarmupCosine", "param_groups",
           "seed_everything", "total_steps", "train_supernet"]

CHECKPOINT = "last.pt"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class TrainResult:
    """What a training run did.

    Attributes:
        steps: optimizer steps done in total (including those before a resume).
        total_steps: steps the schedule was planned for.
        epochs: ``steps / steps_per_epoch``.
        seconds: wall time of this invocation's training loop.
        images_per_s: global training throughput of this invocation.
        final_loss: mean loss over the last logging interval (NaN if no step ran).
        checkpoint: path of ``last.pt``.
        resumed_from: the step the run resumed at, or None.
        bad_images: unreadable images skipped (this process's loaders).
    """

    steps: int
    total_steps: int
    epochs: float
    seconds: float
    images_per_s: float
    final_loss: float
    checkpoint: Path
    resumed_from: Optional[int]
    bad_images: int


def _open_checkpoint(run_dir: Path, resume: bool, fp: Any, config: Dict[str, Any],
                     world_size: int) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume (None for a fresh run), after every check that can fail.

    Every check runs before anything is written: nothing is overwritten.
    """
    ckpt_path = run_dir / CHECKPOINT
    if not resume:
        if ckpt_path.exists():
            raise OutputExistsError(f"run folder {run_dir} already holds a checkpoint; pass "
                                    "--resume to continue it or choose another run name")
        return None
    if not ckpt_path.exists():
        raise CheckpointError(f"no checkpoint to resume in {run_dir} ({ckpt_path} does not exist)")
    ckpt = load_checkpoint(ckpt_path, fp)
    old = ckpt.get("config") or {}
    # Settings added by a later cafeslim are absent from older checkpoints: not a change.
    changed = changed_settings(old, {k: v for k, v in config.items() if k in old})
    if changed:
        diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(f"checkpoint {ckpt_path} was made with other settings ({diff}); "
                              "resume with the run's own settings")
    world = int((ckpt.get("extra") or {}).get("world_size", world_size))
    if world != world_size:
        # The data position counts per-rank batches of a sharded epoch: it means another
        # place in the data under another number of processes.
        raise CheckpointError(f"checkpoint {ckpt_path} was made with {world} processes, not "
                              f"{world_size}; resume with the same torchrun --nproc_per_node")
    return ckpt


class _Trainer:
    """The state of one training run: model, optimizer, schedule, width RNG, step."""

    def __init__(self, supernet: nn.Module, space: Any, data: Any, cfg: TrainConfig,
                 run_dir: Path, info: Any, fp: Any, sampler: Any = None, task: Any = None) -> None:
        from ..tasks import get_task

        self.supernet, self.space, self.data, self.cfg, self.info = supernet, space, data, cfg, info
        self.sampler, self.task = sampler, get_task(task)
        self.ckpt_path, self.fp, self.config = run_dir / CHECKPOINT, fp, to_dict(cfg)
        self.device = info.device
        self.autocast_dtype, self.scaler = amp_setup(cfg, self.device)
        supernet.to(self.device)
        if cfg.channels_last:
            supernet.to(memory_format=torch.channels_last)
        supernet.train()
        self.optimizer = torch.optim.SGD(param_groups(supernet, cfg.weight_decay),
                                         lr=cfg.peak_lr(info.world_size), momentum=cfg.momentum)
        self.spe = data.steps_per_epoch
        self.total = total_steps(cfg, self.spe)
        # Warmup is a fraction of the schedule, so that max_steps compresses it with the rest.
        warmup = min(int(round(self.total * cfg.warmup_epochs / cfg.epochs_for(self.spe))), max(self.total - 1, 0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           WarmupCosine(warmup, self.total))
        self.rng = np.random.default_rng(cfg.seed)  # widths: identical on every rank
        self.step = 0
        self.saved_at = -1

    def restore(self, ckpt: Dict[str, Any]) -> None:
        """Model, optimizer, schedule, GradScaler, RNGs and step of a checkpoint."""
        self.supernet.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"], self.rng)
        self.step = int(ckpt["step"])

    def save(self) -> None:
        """Write ``last.pt`` of the current step (rank 0 only)."""
        if self.info.main:
            at = self.step
            save_checkpoint(self.ckpt_path, model=self.supernet.state_dict(),
                            optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict(),
                            scaler=self.scaler.state_dict() if self.scaler is not None else None,
                            rng=capture_rng(self.rng), step=at, epoch=at // self.spe,
                            position=at % self.spe, fingerprint=self.fp, config=self.config,
                            extra={"total_steps": self.total, "world_size": self.info.world_size})
        self.saved_at = self.step

    def checkpoint(self) -> None:
        """Save; every rank stops together if rank 0 could not write."""
        error = None
        try:
            self.save()
        except OSError as exc:  # disk full, permissions: the old file stands
            error = exc.strerror or str(exc)
        # No rank is left waiting in the next collective.
        if not distributed.agree(error is None):
            raise CheckpointError(f"could not write checkpoint {self.ckpt_path}"
                                  f"{': ' + error if error else ' (on rank 0)'}")

    def train_step(self, model: nn.Module, loss_fn: Any, images: torch.Tensor,
                   targets: torch.Tensor) -> tuple:
        """One min-min step and the schedule's; returns (the step's lr, its stats)."""
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        stats = minmin_step(model, self.space, images, targets, loss_fn, self.optimizer, self.cfg,
                            self.rng, self.step / self.total, scaler=self.scaler,
                            autocast_dtype=self.autocast_dtype, sampler=self.sampler)
        self.scheduler.step()
        self.step += 1
        return lr, stats

    def due(self) -> bool:
        """Whether a checkpoint is due after the current step."""
        s, cfg = self.step, self.cfg
        return bool(cfg.ckpt_every and s % cfg.ckpt_every == 0) or s % self.spe == 0 or s == self.total

    def loop(self, model: nn.Module, log: MetricsLog, callback: Any) -> None:
        """Train to the end of the schedule; on Ctrl-C checkpoint the last finished step."""
        loss_fn = self.task.loss_fn(self.cfg.label_smoothing)
        mid_step = False
        try:
            with Interrupts() as interrupts:
                while self.step < self.total:
                    epoch, position = divmod(self.step, self.spe)
                    for images, targets in self.data.epoch_batches(epoch, position):
                        mid_step = True
                        lr, stats = self.train_step(model, loss_fn, images, targets)
                        mid_step = False
                        if callback is not None:
                            callback(self.step, stats)
                        log.record(self.step, lr, stats, self.cfg.log_every, self.spe)
                        if self.due():
                            self.checkpoint()
                        if interrupts.flag:
                            raise KeyboardInterrupt
                        if self.step >= self.total:
                            break
        except KeyboardInterrupt:
            # Between steps the state is consistent: keep it. In the middle of a step (a
            # second Ctrl-C) it may not be: the last periodic checkpoint stands.
            if not mid_step and self.saved_at != self.step:
                self.save()
            raise


def train_supernet(supernet: nn.Module, space: Any, data: Any, cfg: TrainConfig,
                   run_dir: Union[str, Path], resume: bool = False, progress: bool = True, *,
                   model_name: Optional[str] = None,
                   callback: Optional[Callable[[int, StepStats], None]] = None,
                   sampler: Any = None, task: Any = None) -> TrainResult:
    """Train a supernet with min-min steps, checkpointing into ``run_dir``.

    Args:
        supernet: a :class:`~cafeslim.supernet.Supernet` (moved to the configured device).
        space: its :class:`~cafeslim.bins.space.SearchSpace`.
        data: a :class:`~cafeslim.data.Data` from :func:`~cafeslim.data.build_data`.
        cfg: the training settings.
        run_dir: the run folder (created if needed).
        resume: continue from ``run_dir/last.pt``; it must have been made for the same model,
            channel graph, bins and settings.
        progress: draw a progress bar (rank 0 only).
        model_name: recorded in the checkpoint fingerprint (default: the model's class name).
        callback: called on every rank after every step as ``callback(step, stats)``.
        sampler: draws each step's width (:class:`~cafeslim.bins.sampling.WidthSampler`,
            budget-aware sampling; its FLOPs fraction is logged); None: uniform (Eq. 1).
        task: the :mod:`cafeslim.tasks` task (or its name) whose loss is trained (None: the
            data's, else classification's label-smoothed cross-entropy).

    Returns:
        A :class:`TrainResult`.

    Raises:
        CheckpointError: resume without a checkpoint, or of a corrupt/foreign one, or with
            changed settings (nothing is written then).
        OutputExistsError: ``run_dir`` already holds a checkpoint and ``resume`` is False.
        KeyboardInterrupt: after writing a checkpoint of the last completed step.

    Example:
        >>> data = build_data("demo", info, cfg)                      # doctest: +SKIP
        >>> result = train_supernet(net, space, data, cfg, "runs/demo")  # doctest: +SKIP
        >>> result.steps == result.total_steps                        # doctest: +SKIP
        True
    """
    run_dir = Path(run_dir)
    info = distributed.current(cfg.device)
    fp = fingerprint(model_name or type(getattr(supernet, "model", supernet)).__name__,
                     supernet.graph, space)
    ckpt = _open_checkpoint(run_dir, resume, fp, to_dict(cfg), info.world_size)
    t = _Trainer(supernet, space, data, cfg, run_dir, info, fp, sampler,
                 task if task is not None else getattr(data, "task", None))
    if ckpt is not None:
        t.restore(ckpt)
        del ckpt  # a second copy of the weights: free it before training
    model = distributed.wrap_ddp(supernet, info)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(f".{CHECKPOINT}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a run killed while saving
    resumed_from = t.step if resume else None
    global_batch = data.batch_size * info.world_size
    log = MetricsLog(run_dir / METRICS, info.main, resume, t.step, t.total, progress,
                     global_batch, space, data, sampler=sampler)
    t0, n_start = time.perf_counter(), t.step
    try:
        t.loop(model, log, callback)
    finally:
        log.close()
    seconds = time.perf_counter() - t0
    done = t.step - n_start
    return TrainResult(steps=t.step, total_steps=t.total, epochs=t.step / t.spe, seconds=seconds,
                       images_per_s=done * global_batch / seconds if seconds > 0 else 0.0,
                       final_loss=log.final_loss, checkpoint=t.ckpt_path,
                       resumed_from=resumed_from, bad_images=data.bad_images)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global RNGs — the same on every rank."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
