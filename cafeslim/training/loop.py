"""The epoch loop of :func:`train`: steps, evaluation, checkpoints, resume and progress.

``out_dir`` (``train/`` of a run or export folder, or ``--out``) receives:

* ``last.pt`` — written atomically at the end of every epoch (and every ``ckpt_every`` steps,
  and on Ctrl-C/SIGTERM between two steps): model, optimizer, scheduler, GradScaler, EMA, every
  RNG, the step and the position in the epoch. ``resume=True`` continues from it bit-exactly on
  CPU: the data order and augmentation are functions of (seed, epoch, index), the mixing of a
  batch of (seed, step), and the rest of the randomness is restored.
* ``best.pt`` — the weights of the epoch with the best score on the **holdout** (the task's
  metric — top-1, mIoU, mean label accuracy — on images split off the training set,
  ``val_split``), never on the test split: a model selected on the test
  split would make its test accuracy optimistic, the very mistake the D_val score of the search
  makes (issue 8). Without a holdout, ``best.pt`` is not written and the last epoch is the
  result.
* ``metrics.jsonl`` — one line per epoch: loss, lr, the holdout score (``holdout_<metric>``),
  every test metric of the task (``test_top1``/``test_top5`` for classification,
  ``test_miou``/``test_pixel_acc``, ``test_label_acc``/``test_exact_match``), images/s.

The loss, the metrics and what the recipe may do (mixup and CutMix are classification's) are
the task's (:mod:`cafeslim.tasks`), taken from ``task=``, else ``cfg.task``, else the data's.

Example:
    >>> out = train(model, data, RetrainConfig(epochs=2), out_dir="runs/x/train")   # doctest: +SKIP
    >>> out.test_top1                                                              # doctest: +SKIP
    0.95
"""

from __future__ import annotations

import json
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..config import RetrainConfig, to_dict
from ..errors import CheckpointError, ConfigError, DataError
from ..supernet import distributed
from ..supernet.checkpoint import capture_rng, restore_rng, save_checkpoint
from ..supernet.schedule import amp_setup
from ..supernet.train_log import Interrupts, Progress
from .distill import make_distiller
from .outcome import TrainOutcome, end_epoch, scores
from .recipe import (ModelEma, auto_bn_momentum, make_optimizer, make_scheduler, mix_batch,
                     set_bn_momentum)
from .resume import (BEST, KIND, LAST, METRICS, load_resume, model_fingerprint, refuse_existing,
                     write_metrics)


def _epoch_iter(data: Any, epoch: int, position: int) -> Iterable[Any]:
    """Batches of an epoch after ``position``: a cafeslim ``Data`` seeks, a loader is skipped."""
    if hasattr(data, "epoch_batches"):
        return data.epoch_batches(epoch, position)
    sampler = getattr(data, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return islice(iter(data), position, None)


def _steps_per_epoch(data: Any) -> int:
    spe = int(data.steps_per_epoch) if hasattr(data, "steps_per_epoch") else len(data)
    if spe < 1:
        raise DataError("the training data yields no batch; lower the batch size")
    return spe


class _Run:
    """The mutable state of one :func:`train` call (kept apart so each piece stays short).

    Under ``torchrun`` ``forward`` is the DDP wrapper (gradients averaged over the ranks) and
    ``model`` the module it wraps, whose weights every rank holds identically.
    """

    def __init__(self, model: nn.Module, cfg: RetrainConfig, spe: int,
                 info: distributed.DistInfo, task: Any):
        self.model, self.cfg, self.spe, self.info, self.task = model, cfg, spe, info, task
        self.device = info.device
        self.forward: nn.Module = model
        self.optimizer = make_optimizer(model, cfg, info.world_size)
        self.scheduler = make_scheduler(self.optimizer, cfg, spe)
        self.autocast, self.scaler = amp_setup(cfg, self.device)
        self.ema = ModelEma(model, cfg.model_ema_decay) if cfg.model_ema else None
        self.step, self.best, self.best_epoch = 0, float("-inf"), None
        self.history: List[Dict[str, Any]] = []

    @property
    def result_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> Dict[str, Any]:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler is not None else None,
                    rng=capture_rng(), step=self.step, epoch=self.step // self.spe,
                    position=self.step % self.spe)

    def restore(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        extra = ckpt.get("extra") or {}
        if self.ema is not None and extra.get("ema") is not None:
            self.ema.load_state_dict(extra["ema"])
        self.best = float(extra.get("best", float("-inf")))
        self.best_epoch = extra.get("best_epoch")
        self.history = list(extra.get("history") or [])
        restore_rng(ckpt["rng"])
        self.step = int(ckpt["step"])

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, distiller: Any,
                   num_classes: Optional[int]) -> float:
        cfg = self.cfg
        images, targets = images.to(self.device), targets.to(self.device)
        soft = None
        if num_classes is not None:
            images, soft = mix_batch(images, targets, num_classes, cfg, self.step)
        ctx = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
               else torch.autocast(self.device.type, enabled=False))
        with ctx:
            logits = self.forward(images)
            loss = self.task.retrain_loss(logits, targets, soft, cfg.label_smoothing)
            if distiller is not None:
                loss = distiller.loss(logits, images, loss)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return float(loss.detach())


def train(model: nn.Module, data: Any, cfg: RetrainConfig = RetrainConfig(), *,
          test: Optional[Iterable[Any]] = None, holdout: Optional[Iterable[Any]] = None,
          teacher: Optional[nn.Module] = None, out_dir: Union[str, Path, None] = None,
          resume: bool = False, progress: bool = True, name: str = "",
          callback: Optional[Callable[[Dict[str, Any]], None]] = None,
          task: Any = None) -> TrainOutcome:
    """Train a model (a slimmed sub-network, or any network of a task) with the ``cfg`` recipe.

    Args:
        model: the network, initialised as wanted (see :mod:`cafeslim.training.init`).
        data: a :class:`~cafeslim.data.Data` (its ``test`` and ``val`` are then the default
            test split and holdout) or any re-iterable of ``(images, labels)`` batches.
        cfg: the recipe.
        test: batches to report the test metrics on after every epoch (never selected on).
        holdout: batches held out of training; ``best.pt`` is the epoch best on them.
        teacher: a frozen teacher for knowledge distillation (``cfg.kd_alpha``,
            ``cfg.kd_temperature``); None trains on the labels alone.
        out_dir: where ``last.pt``, ``best.pt`` and ``metrics.jsonl`` go; None keeps nothing
            on disk (and cannot resume).
        resume: continue from ``out_dir/last.pt``.
        progress: a progress bar with ETA on stderr.
        name: the model's name, recorded in the checkpoint.
        callback: called with each epoch's record after its checkpoint is written (raising
            KeyboardInterrupt there stops the training as Ctrl-C would).
        task: the :mod:`cafeslim.tasks` task (or its name): its loss, metrics and recipe
            rules (None: ``cfg.task``, else the data's, else classification).

    Returns:
        A :class:`TrainOutcome`.

    Raises:
        ConfigError: a setting the task refuses (mixup or CutMix outside classification), or
            data of another task.
        CheckpointError: resume without, or from a corrupt or foreign, checkpoint, or with
            other settings; nothing is written then.
        OutputExistsError: ``out_dir`` already holds a ``last.pt`` and ``resume`` is False.
        KeyboardInterrupt: after saving ``last.pt`` at the last completed step.

    Example:
        >>> out = cafeslim.train(small, data, RetrainConfig(epochs=5), out_dir="train")  # doctest: +SKIP
    """
    t = _task_of(task, cfg, data)
    if hasattr(data, "epoch_batches"):
        test = data.test if test is None else test
        holdout = (data.val if data.sizes.get("val") else None) if holdout is None else holdout
    out = Path(out_dir) if out_dir is not None else None
    info = distributed.current(cfg.device)
    device = info.device
    fp = model_fingerprint(model, name)
    config = to_dict(cfg)
    ckpt = None
    if resume:  # every check before anything is written
        if out is None:
            raise CheckpointError("resume needs the output folder of the interrupted training")
        ckpt = load_resume(out / LAST, fp, config, info.world_size)
    elif out is not None:
        distributed.on_main(lambda: refuse_existing(out))
    spe = _steps_per_epoch(data)
    momentum = cfg.bn_momentum if cfg.bn_momentum is not None else auto_bn_momentum(model, cfg.epochs * spe)
    set_bn_momentum(model, momentum)  # before the EMA copies the model
    model.to(device).train()
    run = _Run(model, cfg, spe, info, t)
    if ckpt is not None:
        run.restore(ckpt)
        del ckpt
    # After the restore: wrapping broadcasts rank 0's weights, so every rank starts alike.
    run.forward = distributed.wrap_ddp(model, info)
    distiller = make_distiller(teacher, cfg.kd_alpha, cfg.kd_temperature, t)
    if distiller is not None:
        distiller.to(device)
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    num_classes = _num_classes(model, data, device) if mixing else None
    if out is not None and info.main:
        _start_log(out, run.history if resume else None)
    resumed_from = run.step if resume else None
    # Only rank 0 writes files and draws progress; every rank trains and evaluates.
    return _loop(run, data, test, holdout, distiller, num_classes, out if info.main else None,
                 fp, config, progress and info.main, callback, resumed_from)


def _task_of(task: Any, cfg: RetrainConfig, data: Any) -> Any:
    """The training's task (``task``, else ``cfg.task``, else the data's), checked.

    Raises:
        ConfigError: data read for another task, or a recipe setting the task refuses.
    """
    from ..tasks import get_task

    t = get_task(task if task is not None else (cfg.task or getattr(data, "task", None)))
    if getattr(data, "task", t.name) != t.name:
        raise ConfigError(f"the data were read for {data.task}, the training is {t.name}")
    t.check_recipe(cfg)
    return t


def _start_log(out: Path, history: Optional[List[Dict[str, Any]]]) -> None:
    """Create the folder; a resumed log keeps the epochs of its checkpoint, a new one starts empty."""
    out.mkdir(parents=True, exist_ok=True)
    if history is not None:  # the log reads as one run: drop epochs after the checkpoint
        write_metrics(out / METRICS, history)
    else:
        (out / METRICS).unlink(missing_ok=True)


def _num_classes(model: nn.Module, data: Any, device: torch.device) -> int:
    """Classes of the mixed targets: the data's, or the width of the model's output."""
    if hasattr(data, "num_classes"):
        return int(data.num_classes)
    images, _ = next(iter(data))
    was = model.training
    with torch.no_grad():
        n = int(model.eval()(images[:1].to(device)).shape[1])
    model.train(was)
    return n


def _stop(flag: bool, info: distributed.DistInfo) -> bool:
    """Whether to stop after this step: on any rank's signal, on every rank at the same step."""
    if not info.distributed:
        return flag
    return not distributed.agree(not flag)


def _loop(run: _Run, data: Any, test: Any, holdout: Any, distiller: Any,
          num_classes: Optional[int], out: Optional[Path], fp: Dict[str, Any],
          config: Dict[str, Any], progress: bool, callback: Any,
          resumed_from: Optional[int]) -> TrainOutcome:
    cfg, spe = run.cfg, run.spe
    total = cfg.epochs * spe
    bar = Progress(progress, total, run.step, label="train")
    t0, n_images, saved_at, mid, lr = time.perf_counter(), 0, -1, False, 0.0

    def save() -> None:
        error = None
        if out is not None:  # rank 0
            extra = {"best": run.best, "best_epoch": run.best_epoch, "history": run.history,
                     "ema": run.ema.state_dict() if run.ema is not None else None,
                     "world_size": run.info.world_size}
            try:
                save_checkpoint(out / LAST, **run.state(), fingerprint=fp, config=config,
                                extra=extra, kind=KIND)
            except OSError as exc:  # disk full, permissions: the old file stands
                error = exc.strerror or str(exc)
        if run.info.distributed and not distributed.agree(error is None):
            error = error or "on rank 0"
        if error is not None:  # every rank stops, none waits in the next collective
            raise CheckpointError(f"could not write the training checkpoint: {error}")

    try:
        with Interrupts() as interrupts:
            while run.step < total:
                epoch, position = divmod(run.step, spe)
                t_epoch, losses, seen = time.perf_counter(), [], 0
                for images, targets in _epoch_iter(data, epoch, position):
                    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses
                    mid = True
                    losses.append(run.train_step(images, targets, distiller, num_classes))
                    mid = False
                    seen += int(images.shape[0]) * run.info.world_size  # the global batch
                    bar.update(run.step, losses[-1], lr, seen / max(time.perf_counter() - t_epoch, 1e-9))
                    if cfg.ckpt_every and run.step % cfg.ckpt_every == 0 and run.step % spe:
                        save()
                        saved_at = run.step
                    if _stop(interrupts.flag, run.info):
                        raise KeyboardInterrupt
                    if run.step % spe == 0:
                        break
                n_images += seen
                record = end_epoch(run, epoch, losses, lr, seen, time.perf_counter() - t_epoch,
                                    test, holdout, out)
                save()
                saved_at = run.step
                if out is not None:
                    with open(out / METRICS, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                if callback is not None:
                    callback(record)
    except KeyboardInterrupt:
        # Between steps the state is consistent: keep it (a second Ctrl-C mid-step does not).
        if not mid and saved_at != run.step:
            save()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    last = run.history[-1] if run.history else {}
    model = run.result_model.cpu().eval()
    metric = run.task.metric
    return TrainOutcome(model=model, epochs=run.step // spe, steps=run.step, history=run.history,
                        metric=metric, test={k: last.get(f"test_{k}") for k in run.task.metrics},
                        holdout_score=last.get(f"holdout_{metric}"), best_epoch=run.best_epoch,
                        best_holdout_score=run.best if run.best_epoch is not None else None,
                        images_per_s=n_images / seconds if seconds > 0 else 0.0, seconds=seconds,
                        resumed_from=resumed_from)


__all__ = ["BEST", "KIND", "LAST", "METRICS", "TrainOutcome", "model_fingerprint", "scores",
           "train"]
