"""The stages of a run in its folder: train the supernet, search the budgets, or both per stage.

Each method of :data:`METHODS` turns a :class:`~cafeslim.pipeline.objects.Built` run into the
results of its budgets: ``cafenet`` and ``fixed`` train a supernet and search it (several
stages with ``--stages``), ``uniform`` scores one width multiplier per budget. The searcher
comes from :data:`cafeslim.search.SEARCHERS` by name, with its own options from the
:class:`~cafeslim.config.SearchConfig`.

Example:
    >>> out = METHODS[b.settings.search.method](b, run_dir, resume=False, progress=False,
    ...                                         callback=None, device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..errors import CheckpointError, ConfigError
from .objects import Built, make_fitness
from .rundir import SEARCH_LOG, STAGES, STATE, stage_dir, write_text

Callback = Optional[Callable[[str, int], None]]


def _main() -> bool:  # rank 0 writes the files under torchrun
    from ..supernet.distributed import is_main

    return is_main()


def train_stage(b: Built, supernet: Any, space: Any, folder: Path, resume: bool,
                progress: bool, callback: Callback,
                budgets: Optional[List[float]] = None) -> Dict[str, Any]:
    """Train ``supernet`` on ``space`` in ``folder`` (resuming its ``last.pt`` if asked).

    ``budgets`` (default: the run's) are the windows ``--sampling budget|mixed`` trains in.

    Returns:
        The ``train`` entry of ``result.json``.

    Example:
        >>> train_stage(b, Supernet(b.info.model, b.graph, b.space), b.space, run, False,
        ...             False, None)["steps"]                          # doctest: +SKIP
        120
    """
    from ..bins.sampling import make_sampler
    from ..supernet.train import CHECKPOINT, METRICS, train_supernet

    t = b.settings.train
    sampler = make_sampler(space, b.fm, b.budgets if budgets is None else budgets, t, t.seed,
                           low=b.settings.search.low)
    cb = (lambda step, _stats: callback("train", step)) if callback else None
    res = train_supernet(supernet, space, b.data, t, folder,
                         resume=resume and (folder / CHECKPOINT).exists(), progress=progress,
                         model_name=b.info.name, callback=cb, sampler=sampler,
                         task=b.settings.task)
    lines = (folder / METRICS).read_text().splitlines() if (folder / METRICS).exists() else []
    loss = json.loads(lines[-1]).get("loss") if lines else None  # also when no step ran now
    return {"steps": res.steps, "total_steps": res.total_steps, "epochs": round(res.epochs, 3),
            "seconds": round(res.seconds, 2), "images_per_s": round(res.images_per_s, 1),
            "final_loss": loss}


def _saved_states(state_path: Path, resume: bool) -> Optional[List[Any]]:
    if not (resume and state_path.exists()):
        return None
    try:
        return json.loads(state_path.read_text())["budgets"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{state_path} is corrupt; delete it to search again") from None


def search_stage(b: Built, supernet: Any, space: Any, run_dir: Path, budgets: List[float],
                 state_path: Path, resume: bool, progress: bool, callback: Callback,
                 stage: Optional[int] = None) -> tuple:
    """Search every budget on a trained supernet, logging and saving state as it goes.

    Returns:
        ``(results, summary)``: a :class:`~cafeslim.search.SearchResult` per budget and the
        ``search`` entry of ``result.json``.
    """
    from ..search import SEARCHERS, search_with
    from .recorder import SearchRecorder

    s = b.settings.search
    states = _saved_states(state_path, resume)
    cls = SEARCHERS[s.searcher]
    label = ",".join(s.budgets) + (f" (stage {stage})" if stage else "")
    rec = SearchRecorder(run_dir / SEARCH_LOG, state_path, stage, states, progress, label,
                         cls.generations(s) * len(budgets), write=_main())

    def on_state(sts: List[Any]) -> None:
        done = rec.on_state(sts)
        if callback is not None:
            callback("search", done)

    fitness, t0 = make_fitness(b, supernet, space), time.perf_counter()
    try:
        results = search_with(s, fitness, space, b.fm, budgets, seed=b.settings.train.seed,
                              states=states, on_eval=rec.on_eval, on_state=on_state,
                              tag={"stage": stage} if stage else None)
    finally:
        rec.close()
    summary = {k: round(v, 4) if isinstance(v, float) else v
               for k, v in fitness.stats.summary().items()}
    return results, {"seconds": round(time.perf_counter() - t0, 2),
                     "evaluated": sum(r.evaluated for r in results), **summary}


def uniform_method(b: Built, run_dir: Path, *, resume: bool, progress: bool,
                   callback: Callback, device: Any) -> Dict[str, Any]:
    """The Uniform baseline: one multiplier per budget, measured like a search candidate."""
    from ..bins import uniform_widths
    from ..search import SearchResult
    from ..supernet import Supernet

    supernet = Supernet(b.info.model, b.graph, b.space).to(device)
    fitness = make_fitness(b, supernet, offset=0)
    results, lines = [], []
    for budget in b.budgets:
        res = fitness(uniform_widths(b.space, b.fm, budget, low=b.settings.search.low))
        rec = {"index": 0, "searcher": "uniform", "budget": budget, "generation": 0,
               **res.to_json(), "cached": False}
        lines.append(json.dumps(rec) + "\n")
        results.append(SearchResult(budget, res.k, res, [rec], "uniform"))
    if _main():
        write_text(run_dir / SEARCH_LOG, "".join(lines).rstrip("\n"))
    return {"results": results, "checkpoints": [None] * len(results), "train": None,
            "search": {"evaluated": len(results), **fitness.stats.summary()}}


def _multistage(b: Built, supernet: Any, run_dir: Path, resume: bool, progress: bool,
                callback: Callback) -> Dict[str, Any]:
    """Algorithm 1: stage t trains in ``stage<t>/`` (stage 1 in the run folder) and searches."""
    from ..search.multistage import run_stages
    from ..supernet.checkpoint import load_checkpoint
    from ..supernet.train import CHECKPOINT

    s = b.settings.search
    if len(b.budgets) != 1:
        raise ConfigError("multi-stage search (--stages > 1) takes one budget; run one search "
                          "per --flops value")
    done = json.loads((run_dir / STAGES).read_text()) if resume and (run_dir / STAGES).exists() else []
    info: Dict[str, Any] = {}

    def train_fn(stage: Any, space: Any) -> None:
        here = stage_dir(run_dir, stage.index)
        if stage.index > 1 and not (here / CHECKPOINT).exists():  # start from stage t-1
            prev = stage_dir(run_dir, stage.index - 1) / CHECKPOINT
            supernet.load_state_dict(load_checkpoint(prev)["model"])
        supernet.space = space
        supernet.clear_bn_stats()  # statistics of the old weights
        # Budget-aware sampling trains in this stage's window and in the final one.
        info["train"] = train_stage(b, supernet, space, here, resume, progress, callback,
                                    budgets=[stage.budget, *b.budgets])

    def search_fn(stage: Any, space: Any) -> Any:
        res, info["search"] = search_stage(b, supernet, space, run_dir, [stage.budget],
                                           stage_dir(run_dir, stage.index) / STATE, resume,
                                           progress, callback, stage=stage.index)
        return res[0]

    def on_stage(sr: Any) -> None:
        done[sr.stage.index - 1:] = [sr.to_json()]
        if _main():
            write_text(run_dir / STAGES, json.dumps(done))

    # The last stage always runs (instantly when finished): its SearchResult is the answer.
    out = run_stages(train_fn, search_fn, b.space, b.fm, b.budgets[0], stages=s.stages,
                     alpha=s.alpha, done=done[:s.stages - 1], on_stage=on_stage)
    ckpt = stage_dir(run_dir, s.stages) / CHECKPOINT
    return {"results": [out[-1].result], "checkpoints": [str(ckpt.relative_to(run_dir))],
            "space": out[-1].space, "stages": [sr.to_json() for sr in out], **info}


def supernet_method(b: Built, run_dir: Path, *, resume: bool, progress: bool,
                    callback: Callback, device: Any) -> Dict[str, Any]:
    """CafeNet (locally free, r = offset) or fixed (r = 0): train the supernet, then search."""
    from ..supernet import Supernet

    supernet = Supernet(b.info.model, b.graph, b.space)
    if b.settings.search.stages > 1:
        return _multistage(b, supernet, run_dir, resume, progress, callback)
    train = train_stage(b, supernet, b.space, run_dir, resume, progress, callback)
    results, search = search_stage(b, supernet, b.space, run_dir, b.budgets, run_dir / STATE,
                                   resume, progress, callback)
    return {"results": results, "checkpoints": ["last.pt"] * len(results), "train": train,
            "search": search}


def random_method(b: Built, run_dir: Path, **kw: Any) -> Dict[str, Any]:
    """The Random baseline: see :mod:`cafeslim.pipeline.random_baseline`."""
    from .random_baseline import random_method as run

    return run(b, run_dir, **kw)


Method = Callable[..., Dict[str, Any]]
METHODS: Dict[str, Method] = {"cafenet": supernet_method, "fixed": supernet_method,
                              "uniform": uniform_method, "random": random_method}
"""``--method`` name -> how the run gets its results (the offset rule is in the settings)."""

__all__ = ["METHODS", "random_method", "search_stage", "supernet_method", "train_stage", "uniform_method"]
