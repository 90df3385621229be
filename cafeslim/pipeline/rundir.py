"""The run folder of DESIGN.md: its layout, output folders, and the checks before a resume.

A run folder holds ``config.yaml`` (resolved settings), ``graph.json``, ``bins.json``,
``last.pt`` (stage t > 1: ``stage<t>/last.pt``), ``metrics.jsonl``, ``search.jsonl`` (every
evaluated width vector), ``search_state.json`` (the searchers after the last finished
generation), ``stages.json`` (multi-stage), ``result.json``, ``report.md``, ``plots/`` and
``export/``. Nothing here imports torch; the empty-folder check is
:func:`cafeslim.config.ensure_empty_dir`.

Example:
    >>> is_run_dir("runs/test_resnet-50pct")
    True
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

from ..config import (BUILTIN_IMG_SIZE, CONFIG_FILE, RESUMABLE_CHANGES, RunSettings, atomic_write,
                      ensure_empty_dir)
from ..errors import CheckpointError, ConfigError

CONFIG, RESULT, SEARCH_LOG, STATE, STAGES = (CONFIG_FILE, "result.json", "search.jsonl",
                                             "search_state.json", "stages.json")
# What --force may delete: only files a run writes (never a user's other files).
RUN_FILES = (CONFIG, RESULT, SEARCH_LOG, STATE, STAGES, "graph.json", "bins.json", "last.pt",
             "metrics.jsonl", "report.md", "plots", "export", "random")


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Check (and with ``force`` clear) a run folder before a run starts or resumes.

    Raises:
        CheckpointError: ``resume`` without a ``config.yaml`` in the folder.
        OutputExistsError: a non-empty folder without ``resume`` or ``force``.

    Example:
        >>> prepare_run_dir(Path("runs/new"), resume=False, force=False)     # doctest: +SKIP
    """
    if resume:
        ensure_empty_dir(run_dir, True, what="run folder")
        if not (run_dir / CONFIG).is_file():
            raise CheckpointError(f"nothing to resume in {run_dir} (no {CONFIG}); run without "
                                  "--resume")
        return
    ensure_empty_dir(run_dir, force, what="run folder", hint=(
        "pass --resume to continue it, --force to start it over, or --out for another"))
    if run_dir.is_dir() and force:
        for p in [run_dir / n for n in RUN_FILES] + sorted(run_dir.glob("stage[0-9]*")):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def check_resume(saved: RunSettings, new: RunSettings) -> RunSettings:
    """The saved settings, with only where-it-runs changes (workers, device, ...) taken.

    Raises:
        ConfigError: anything else differs (listing every difference).

    Example:
        >>> check_resume(saved, replace(saved, train=replace(saved.train, workers=8)))  # doctest: +SKIP
    """
    if new.data in BUILTIN_IMG_SIZE and new.train.img_size is None:  # build() filled in the demo's size
        new = replace(new, train=replace(new.train, img_size=saved.train.img_size))
    if new.train.epochs is None:  # build() filled in the default's epochs for the data
        new = replace(new, train=replace(new.train, epochs=saved.train.epochs))
    old_d, new_d = saved.to_dict(), new.to_dict()
    diff = []
    for key in old_d:
        a, b = old_d[key], new_d[key]
        if isinstance(a, dict):
            diff += [f"{key}.{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k) and not (key == "train" and k in RESUMABLE_CHANGES)]
        elif a != b:
            diff.append(f"{key} {a!r} -> {b!r}")
    if diff:
        raise ConfigError(f"the run was made with other settings ({'; '.join(diff)}); resume "
                          "with the run's own settings")
    keep = {k: getattr(new.train, k) for k in RESUMABLE_CHANGES}
    return replace(saved, train=replace(saved.train, **keep))


def default_run_dir(settings: RunSettings) -> Path:
    """``runs/<model>-<budgets>[-<task>][-<method>]``, e.g. ``runs/test_resnet-50pct``.

    The task is named unless it is the default (classification), so that the demos of the
    tasks on one model do not share a folder.

    Example:
        >>> from cafeslim.config import SearchConfig
        >>> default_run_dir(RunSettings("tv:resnet18", search=SearchConfig(flops="1G,50%")))
        PosixPath('runs/resnet18-1G_50pct')
    """
    name = settings.model.split(":")[-1].split("/")[-1]
    budgets = "_".join(b.replace("%", "pct") for b in settings.search.budgets) or "nobudget"
    tail = "" if settings.task == _DEFAULT_TASK else f"-{settings.task}"
    tail += "" if settings.search.method == "cafenet" else f"-{settings.search.method}"
    return Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{budgets}{tail}")


_DEFAULT_TASK = RunSettings.__dataclass_fields__["task"].default


def is_run_dir(arg: str) -> bool:
    """Whether a command-line argument names a run folder rather than a model.

    A model name never holds a path separator unless it has a ``:`` (``hf-hub:org/name``),
    so ``runs/x`` is a run folder even when it does not exist (the error then says so).

    Example:
        >>> is_run_dir("runs/test_resnet-50pct"), is_run_dir("tv:resnet18")
        (True, False)
    """
    if ":" in arg:
        return False
    return "/" in arg or "\\" in arg or Path(arg).is_dir()


def write_text(path: Path, text: str) -> None:
    """Write one text file of the run atomically (a newline is added)."""
    atomic_write(path, lambda fh: fh.write((text + "\n").encode("utf-8")))


def stage_dir(run_dir: Path, stage: int) -> Path:
    """Where stage ``stage`` trains: the run folder itself for stage 1, else ``stage<t>/``."""
    return run_dir if stage == 1 else run_dir / f"stage{stage}"


__all__ = ["CONFIG", "RESULT", "RUN_FILES", "SEARCH_LOG", "STAGES", "STATE", "check_resume",
           "default_run_dir", "ensure_empty_dir", "is_run_dir", "prepare_run_dir", "stage_dir", "write_text"]
