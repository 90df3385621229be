"""What supernet training reports and how it stops: ``metrics.jsonl``, a progress bar, Ctrl-C.

``metrics.jsonl`` lines after a resumed checkpoint's step are dropped (:func:`truncate_metrics`),
so the log reads as one run.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np


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


def truncate_metrics(path: Path, step: int) -> None:
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


def width_summary(space: Any, widths: List[tuple]) -> Dict[str, float]:
    """Mean/min/max fraction of bins kept, over the steps of a logging interval."""
    k = np.asarray(widths, dtype=np.float64)
    frac = (k / space.num_bins).mean(axis=1)
    return {"mean": round(float(frac.mean()), 4), "min": round(float(frac.min()), 4),
            "max": round(float(frac.max()), 4)}

class MetricsLog:
    """``metrics.jsonl`` and the progress bar: one line per ``log_every`` steps (rank 0 writes).

    Example:
        >>> log = MetricsLog(run / "metrics.jsonl", True, False, 0, 120, False, 64, space, data)  # doctest: +SKIP
    """

    def __init__(self, path: Path, main: bool, resume: bool, step: int, total: int,
                 progress: bool, global_batch: int, space: Any, data: Any,
                 sampler: Any = None) -> None:
        if main:
            if resume:
                truncate_metrics(path, step)
            elif path.exists():
                path.unlink()  # a fresh run in a folder with an old log but no checkpoint
        self.space, self.data, self.total, self.global_batch = space, data, total, global_batch
        self.sampler = sampler  # its FLOPs model says where the sampled widths were
        self.bar = Progress(progress and main, total, step)
        self.fh = open(path, "a", encoding="utf-8") if main else None
        self.last_t = time.perf_counter()
        self.losses: List[float] = []
        self.widths: List[tuple] = []
        self.chosen: List[int] = []
        self.final_loss = float("nan")

    def record(self, step: int, lr: float, stats: Any, log_every: int, spe: int) -> None:
        """Note one finished step; write a line every ``log_every`` steps and at the end."""
        self.losses.append(stats.loss)
        self.widths.append(tuple(stats.widths))
        self.chosen.append(stats.chosen)
        if not (step % log_every == 0 or step == self.total):
            return
        now = time.perf_counter()
        ips = len(self.losses) * self.global_batch / max(now - self.last_t, 1e-9)
        self.final_loss = float(np.mean(self.losses))
        if self.fh is not None:
            line = {"step": step, "epoch": round(step / spe, 4), "loss": self.final_loss, "lr": lr,
                    "img_s": round(ips, 2), "widths": width_summary(self.space, self.widths),
                    "fixed_pattern": round(self.chosen.count(0) / len(self.chosen), 4),
                    "candidates": stats.n_candidates, "bad_images": self.data.bad_images}
            if self.sampler is not None:  # mean FLOPs of the sampled widths / full
                line["flops_frac"] = round(float(self.sampler.flops_fraction(self.widths).mean()), 4)
            self.fh.write(json.dumps(line) + "\n")
            self.fh.flush()
        self.bar.update(step, self.final_loss, lr, ips)
        self.last_t, self.losses, self.widths, self.chosen = now, [], [], []

    def close(self) -> None:
        self.bar.close()
        if self.fh is not None:
            self.fh.close()


__all__ = ["Interrupts", "MetricsLog", "Progress", "truncate_metrics", "width_summary"]
