"""The whole ``cafeslim search`` run: analyse, bin, train (min-min), search (max-max), report.

:func:`run_search` is the one library call behind the command. It writes the run folder
(:mod:`.rundir`), builds the run's objects (:mod:`.build`), runs the method's stages
(:mod:`.stages`) and writes ``result.json`` and ``report.md`` (:mod:`.report`).

**Resume** continues at the first unfinished piece (training from ``last.pt``, the search from
its state, multi-stage from ``stages.json``), losing at most the current epoch or generation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Union

from ..config import RunSettings, dump_yaml, load_settings
from ..errors import ConfigError
from .objects import Built, build
from .rundir import CONFIG, RESULT, check_resume, prepare_run_dir, write_text
from .stages import METHODS, Callback


@dataclass
class RunResult:
    """What :func:`run_search` produced: the run folder, ``result.json``'s content, seconds."""

    run_dir: Path
    result: Dict[str, Any]
    seconds: float


def start_run(settings: RunSettings, run_dir: Union[str, Path], *, resume: bool = False,
              force: bool = False, with_data: bool = True) -> Built:
    """Check the run folder, build the run's objects and (on a fresh run) write its files.

    A fresh run writes ``config.yaml``, ``graph.json`` and ``bins.json``; a resumed one takes
    the folder's own settings (only where-it-runs changes, see
    :func:`~.rundir.check_resume`). Every check runs before anything is written.

    Raises:
        OutputExistsError, CheckpointError, ConfigError: one line each.

    Example:
        >>> b = start_run(RunSettings("timm:test_resnet", search=SearchConfig(flops="50%")),
        ...               "runs/demo")                                      # doctest: +SKIP
        >>> train_stage(b, Supernet(b.info.model, b.graph, b.space), b.space, ...)  # doctest: +SKIP
    """
    from ..supernet.distributed import is_main

    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, force)
    if resume:
        settings = check_resume(load_settings(run_dir), settings)
    b = build(settings, with_data=with_data)
    if is_main() and not resume:
        from ..bins import bins_json

        dump_yaml(b.settings.to_dict(), run_dir / CONFIG)
        for name, doc in (("graph.json", b.graph.to_json()),
                          ("bins.json", bins_json(b.space, b.info.name))):
            write_text(run_dir / name, json.dumps(doc, indent=1))
    return b


def run_search(settings: RunSettings, run_dir: Union[str, Path], *,
               resume: bool = False, force: bool = False, progress: bool = True,
               callback: Callback = None) -> RunResult:
    """Analyse, bin, train the supernet, search every budget and write the run directory.

    Args:
        settings: what to run. With ``resume`` they must equal the run's own (only
            ``workers``, ``device``, ``log_every`` and ``ckpt_every`` may differ).
        run_dir: the run folder (the CLI's default is ``runs/<model>-<budget>``).
        resume: continue an interrupted run in ``run_dir``.
        force: start over in a non-empty ``run_dir`` (deletes only the run's own files).
        progress: live progress bars on stderr.
        callback: ``callback("train", step)`` after every training step and
            ``callback("search", generation)`` after every saved generation (tests use it to
            interrupt a run at a chosen point).

    Raises:
        OutputExistsError, CheckpointError, ConfigError, BudgetError, DataError: one line each.

    Example:
        >>> s = RunSettings("timm:test_resnet", search=SearchConfig(flops="50%"))
        >>> res = run_search(s, "runs/demo")                              # doctest: +SKIP
        >>> res.result["budgets"][0]["top1"]                              # doctest: +SKIP
        0.83
    """
    from ..supernet import distributed

    if not settings.search.budgets:
        raise ConfigError("no FLOPs budget: pass --flops B (2G, 300M, 50%, 0.5x; several "
                          "comma-separated)")
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    with distributed.session(settings.train.device) as dist_info:
        b = start_run(settings, run_dir, resume=resume, force=force)
        from .report import result_json, write_report

        method = METHODS[b.settings.search.method]
        out = method(b, run_dir, resume=resume, progress=progress and dist_info.main,
                     callback=callback, device=dist_info.device)
        result = result_json(b, out, time.perf_counter() - t0)
        if dist_info.main:
            write_text(run_dir / RESULT, json.dumps(result, indent=2))
            write_report(run_dir, result, space=b.space)
    return RunResult(run_dir, result, time.perf_counter() - t0)


__all__ = ["RunResult", "run_search", "start_run"]
