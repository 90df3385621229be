"""Supernet training with min-min steps (Eq. 11-12): schedule, logging, checkpoints, resume.

:func:`train_supernet` trains a :class:`~cafeslim.supernet.Supernet` on a
:class:`~cafeslim.data.Data`: SGD with momentum, per-step cosine learning rate after a linear
warmup, weight decay on weights only (never on norms and biases, whose decay only shrinks the
scale they exist to learn), label-smoothed cross-entropy, optional AMP and channels-last.
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

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig, changed_settings, to_dict
from ..errors import CheckpointError, ConfigError, OutputExistsError
from . import distributed
from .checkpoint import capture_rng, fingerprint, load_checkpoint, restore_rng, save_checkpoint
from .minmin import StepStats, minmin_step

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


class WarmupCosine:
    """LR factor per step: linear warmup to 1, then cosine to 0 at ``total`` steps.

    A plain object (not a lambda) so that ``LambdaLR.state_dict()`` stores its numbers.

    Example:
        >>> f = WarmupCosine(warmup=10, total=110); f(0), f(9), f(110)
        (0.1, 1.0, 0.0)
    """

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = int(warmup), int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        t = min(max(step - self.warmup, 0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two SGD groups: decayed weights, and norms/biases (every tensor with < 2 dims) without.

    Example:
        >>> import torchvision
        >>> [len(g["params"]) > 0 for g in param_groups(torchvision.models.resnet18(), 1e-4)]
        [True, True]
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Steps the schedule covers: all epochs, or ``max_steps`` if smaller."""
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


def amp_setup(cfg: Any, device: torch.device) -> tuple:
    """(autocast dtype or None, GradScaler or None) for ``cfg.amp`` on ``device``."""
    if cfg.amp == "off":
        return None, None
    if device.type != "cuda":
        if cfg.amp == "fp16":
            raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 or off on CPU")
        return torch.bfloat16, None  # CPU autocast supports bf16 only
    if cfg.amp == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


class Interrupts:
    """Turns the first SIGINT/SIGTERM into a flag checked between steps.

    Stopping between steps guarantees a consistent checkpoint (never half an optimizer
    update). A second signal raises KeyboardInterrupt at once, for a user who will not wait.
    """

    def __init__(self) -> None:
        self.flag = False
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Progress:
    """A rich progress bar with ETA on stderr (rank 0 only), or nothing; ``label`` names it.

    Shared by supernet training and :mod:`cafeslim.training`.
    """

    def __init__(self, enabled: bool, total: int, done: int, label: str = "supernet"):
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn
        from rich.progress import Progress as RichProgress
        from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = RichProgress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  "
                                       "{task.fields[ips]} img/s"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        self.task = self.bar.add_task("train", total=total, completed=done, loss="-", lr="-", ips="-")
        self.bar.start()

    def update(self, step: int, loss: float, lr: float, ips: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                            ips=f"{ips:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (they belong to the part of the run being redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue  # a line torn by a kill: drop it
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    tmp.replace(path)


def _width_summary(space: Any, widths: List[tuple]) -> Dict[str, float]:
    """Mean/min/max fraction of bins kept, over the steps of a logging interval."""
    k = np.asarray(widths, dtype=np.float64)
    frac = (k / space.num_bins).mean(axis=1)
    return {"mean": round(float(frac.mean()), 4), "min": round(float(frac.min()), 4),
            "max": round(float(frac.max()), 4)}


def train_supernet(supernet: nn.Module, space: Any, data: Any, cfg: TrainConfig,
                   run_dir: Union[str, Path], resume: bool = False, progress: bool = True, *,
                   model_name: Optional[str] = None,
                   callback: Optional[Callable[[int, StepStats], None]] = None) -> TrainResult:
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
    ckpt_path, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS
    info = distributed.current(cfg.device)
    fp = fingerprint(model_name or type(getattr(supernet, "model", supernet)).__name__,
                     supernet.graph, space)
    config = to_dict(cfg)
    ckpt = None
    # Every check that can fail runs before anything is written: nothing is overwritten.
    if resume:
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
        world = int((ckpt.get("extra") or {}).get("world_size", info.world_size))
        if world != info.world_size:
            # The data position counts per-rank batches of a sharded epoch: it means another
            # place in the data under another number of processes.
            raise CheckpointError(f"checkpoint {ckpt_path} was made with {world} processes, not "
                                  f"{info.world_size}; resume with the same torchrun --nproc_per_node")
    elif ckpt_path.exists():
        raise OutputExistsError(f"run folder {run_dir} already holds a checkpoint; pass --resume "
                                "to continue it or choose another run name")
    device = info.device
    autocast_dtype, scaler = amp_setup(cfg, device)
    supernet.to(device)
    if cfg.channels_last:
        supernet.to(memory_format=torch.channels_last)
    supernet.train()
    optimizer = torch.optim.SGD(param_groups(supernet, cfg.weight_decay),
                                lr=cfg.peak_lr(info.world_size), momentum=cfg.momentum)
    spe = data.steps_per_epoch
    total = total_steps(cfg, spe)
    # Warmup is a fraction of the schedule, so that max_steps compresses it with the rest.
    warmup = min(int(round(total * cfg.warmup_epochs / cfg.epochs)), max(total - 1, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    rng = np.random.default_rng(cfg.seed)  # widths: identical on every rank, never seed + rank
    step = 0
    if ckpt is not None:
        supernet.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"], rng)
        step = int(ckpt["step"])
        del ckpt  # a second copy of the weights: free it before training
    model = distributed.wrap_ddp(supernet, info)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    main = info.main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(f".{CHECKPOINT}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a run killed while saving
        if resume:
            _truncate_metrics(metrics_path, step)
        elif metrics_path.exists():
            metrics_path.unlink()  # a fresh run in a folder with an old log but no checkpoint
    resumed_from = step if resume else None

    def save(at_step: int) -> None:
        if main:
            save_checkpoint(ckpt_path, model=supernet.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict() if scaler is not None else None,
                            rng=capture_rng(rng), step=at_step, epoch=at_step // spe,
                            position=at_step % spe, fingerprint=fp, config=config,
                            extra={"total_steps": total, "world_size": info.world_size})

    bar = Progress(progress and main, total, step)
    log_fh = open(metrics_path, "a", encoding="utf-8") if main else None
    t0, n_start = time.perf_counter(), step
    last_log_t, losses, widths, chosen, final_loss = t0, [], [], [], float("nan")
    global_batch = data.batch_size * info.world_size
    saved_at, mid_step = -1, False
    mm_cfg = cfg.minmin()
    try:
        with Interrupts() as interrupts:
            while step < total:
                epoch, position = divmod(step, spe)
                for images, targets in data.epoch_batches(epoch, position):
                    images = images.to(device, non_blocking=True)
                    targets = targets.to(device, non_blocking=True)
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                    mid_step = True
                    stats = minmin_step(model, space, images, targets, loss_fn, optimizer,
                                        mm_cfg, rng, step / total, scaler=scaler,
                                        autocast_dtype=autocast_dtype)
                    scheduler.step()
                    step += 1
                    mid_step = False
                    losses.append(stats.loss)
                    widths.append(tuple(stats.widths))
                    chosen.append(stats.chosen)
                    if callback is not None:
                        callback(step, stats)
                    if step % cfg.log_every == 0 or step == total:
                        now = time.perf_counter()
                        ips = len(losses) * global_batch / max(now - last_log_t, 1e-9)
                        final_loss = float(np.mean(losses))
                        if log_fh is not None:
                            log_fh.write(json.dumps({
                                "step": step, "epoch": round(step / spe, 4), "loss": final_loss,
                                "lr": lr, "img_s": round(ips, 2),
                                "widths": _width_summary(space, widths),
                                "fixed_pattern": round(chosen.count(0) / len(chosen), 4),
                                "candidates": stats.n_candidates,
                                "bad_images": data.bad_images}) + "\n")
                            log_fh.flush()
                        bar.update(step, final_loss, lr, ips)
                        last_log_t, losses, widths, chosen = now, [], [], []
                    if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step % spe == 0 \
                            or step == total:
                        error = None
                        try:
                            save(step)
                            saved_at = step
                        except OSError as exc:  # disk full, permissions: the old file stands
                            error = exc.strerror or str(exc)
                        # Every rank stops together if rank 0 could not write (no rank is left
                        # waiting in the next collective).
                        if not distributed.agree(error is None):
                            raise CheckpointError(f"could not write checkpoint {ckpt_path}"
                                                  f"{': ' + error if error else ' (on rank 0)'}")
                    if interrupts.flag:
                        raise KeyboardInterrupt
                    if step >= total:
                        break
    except KeyboardInterrupt:
        # Between steps the state is consistent: keep it. In the middle of a step (a second
        # Ctrl-C) it may not be: the last periodic checkpoint stands.
        if not mid_step and saved_at != step:
            save(step)
        raise
    finally:
        bar.close()
        if log_fh is not None:
            log_fh.close()
    seconds = time.perf_counter() - t0
    done = step - n_start
    return TrainResult(steps=step, total_steps=total, epochs=step / spe, seconds=seconds,
                       images_per_s=done * global_batch / seconds if seconds > 0 else 0.0,
                       final_loss=final_loss, checkpoint=ckpt_path, resumed_from=resumed_from,
                       bad_images=data.bad_images)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global RNGs — the same on every rank."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
