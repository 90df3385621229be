"""The whole ``cafeslim search`` pipeline: analyse, bin, train (min-min), search (max-max), report.

:func:`run_search` is the one library call behind the command. It writes the run directory of
DESIGN.md: ``config.yaml`` (resolved settings), ``graph.json``, ``bins.json``, ``last.pt``
(stage t > 1: ``stage<t>/last.pt``), ``metrics.jsonl``, ``search.jsonl`` (every evaluated width
vector), ``search_state.json`` (the searchers after the last finished generation),
``result.json``, ``report.md`` and ``plots/`` (:mod:`cafeslim.search.report`).

**Resume** continues at the first unfinished piece (training from ``last.pt``, the search from
its state, multi-stage from ``stages.json``), losing at most the current epoch or generation.
:data:`DEMO_PRESET` holds the small defaults of ``--data demo`` (64 px, 6 epochs, a small
search): the README command takes minutes on two CPU cores; real data get the paper's.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Union

from ..config import (RESUMABLE_CHANGES, TrainConfig, atomic_write, dump_yaml, load_yaml, resolve,
                      section, to_dict)
from ..errors import CheckpointError, ConfigError, OutputExistsError

RUN_FORMAT = "cafeslim.run/1"
DEMO = "demo"
CONFIG, RESULT, SEARCH_LOG, STATE, STAGES = ("config.yaml", "result.json", "search.jsonl",
                                             "search_state.json", "stages.json")
# What --force may delete: only files this module writes (never a user's other files).
RUN_FILES = (CONFIG, RESULT, SEARCH_LOG, STATE, STAGES, "graph.json", "bins.json", "last.pt",
             "metrics.jsonl", "report.md", "plots", "export")
DEMO_PRESET: Dict[str, Dict[str, Any]] = {  # measured: 98% D_val top-1 at 50% FLOPs
    "train": {"epochs": 6, "lr": 0.2, "warmup_epochs": 0.5, "log_every": 5},
    "search": {"population": 12, "iterations": 6, "parents": 4, "samples": 72,
               "recal_batches": 2},
}
DEMO_IMG_SIZE = 64  # the digits are 8×8: a larger input only costs time
Callback = Optional[Callable[[str, int], None]]


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the width search (max-max, Eq. 13) and of the method.

    Attributes:
        flops: budget(s), comma-separated: ``2G``, ``300M``, ``50%``, ``0.5x``, ``1G,2G``.
        method: ``cafenet`` (locally free, r = offset), ``fixed`` (r = 0) or ``uniform`` (no
            supernet training: one width multiplier for every layer, the paper's baseline).
        searcher: ``evolution`` (CafeNet-E) or ``random`` (CafeNet-R).
        population, iterations, parents: evolutionary search; samples: random search.
        low: the window's lower end, a fraction of the budget.
        eval_batches: D_val batches per evaluation (None: all of D_val).
        recal_batches: training batches per BN recalibration.
        stages, alpha: multi-stage search (Eq. 10): T stages, β divided by α each stage.
    """

    flops: Optional[str] = None
    method: Literal["cafenet", "fixed", "uniform"] = "cafenet"
    searcher: Literal["evolution", "random"] = "evolution"
    population: int = 40
    iterations: int = 50
    parents: int = 10
    samples: int = 2000
    low: float = 0.97
    eval_batches: Optional[int] = None
    recal_batches: int = 20
    stages: int = 1
    alpha: float = 2.0

    def __post_init__(self) -> None:
        checks = ((self.population >= 2, "population must be at least 2"),
                  (self.iterations >= 1, "iterations must be at least 1"),
                  (self.parents >= 1, "parents must be at least 1"),
                  (self.samples >= 1, "samples must be at least 1"),
                  (0 < self.low <= 1, "low must be in (0, 1]"),
                  (self.recal_batches >= 1, "recal_batches must be at least 1"),
                  (self.eval_batches is None or self.eval_batches >= 1,
                   "eval_batches must be at least 1"),
                  (self.stages >= 1, "stages must be at least 1"),
                  (self.alpha > 0, "alpha must be positive"))
        for ok, what in checks:
            if not ok:
                raise ConfigError(what)

    @property
    def budgets(self) -> List[str]:
        """The budgets as written, e.g. ``["1G", "2G"]``."""
        return [b.strip() for b in (self.flops or "").split(",") if b.strip()]


@dataclass(frozen=True)
class BinsConfig:
    """FLOPs-sensitive bins (Eq. 9): β, the channel divisor, the smallest width, channel order."""

    beta: float = 1.0
    divisor: int = 1
    min_width: Optional[float] = None
    order: Literal["natural", "l1"] = "natural"

    def __post_init__(self) -> None:
        if not self.beta > 0 or self.divisor < 1:
            raise ConfigError("beta must be positive and divisor at least 1")


@dataclass(frozen=True)
class RunSettings:
    """Everything a run depends on: what ``config.yaml`` holds.

    Example:
        >>> RunSettings("timm:test_resnet", search=SearchConfig(flops="50%")).search.budgets
        ['50%']
    """

    model: str
    data: str = DEMO
    pretrained: bool = False
    weights: Optional[str] = None
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    bins: BinsConfig = field(default_factory=BinsConfig)

    def __post_init__(self) -> None:
        if self.search.method == "fixed" and self.train.offset != 0:  # fixed pattern: r = 0
            object.__setattr__(self, "train", replace(self.train, offset=0))

    def to_dict(self) -> Dict[str, Any]:
        """The ``config.yaml`` document."""
        return {"format": RUN_FORMAT, "model": self.model, "data": self.data,
                "pretrained": self.pretrained, "weights": self.weights,
                "train": to_dict(self.train), "search": to_dict(self.search),
                "bins": to_dict(self.bins)}

    @classmethod
    def from_dict(cls, y: Mapping[str, Any]) -> "RunSettings":
        """Inverse of :meth:`to_dict`; missing keys take their defaults (ConfigError if bad)."""
        if not y.get("model"):
            raise ConfigError("the settings name no model")
        return cls(model=str(y["model"]), data=str(y.get("data") or DEMO),
                   pretrained=bool(y.get("pretrained", False)), weights=y.get("weights"),
                   train=resolve(TrainConfig, None, section(y, "train")),
                   search=resolve(SearchConfig, None, section(y, "search")),
                   bins=resolve(BinsConfig, None, section(y, "bins")))


def load_settings(run_dir: Union[str, Path]) -> RunSettings:
    """The settings a run was made with (its ``config.yaml``); CheckpointError if none.

    Example:
        >>> load_settings("runs/test_resnet-50pct").search.flops    # doctest: +SKIP
        '50%'
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} is not a cafeslim run folder (no {CONFIG})")
    y = load_yaml(run_dir / CONFIG)
    if y.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{run_dir / CONFIG} is not a cafeslim search config")
    return RunSettings.from_dict(y)


# --------------------------------------------------------------------------- building

@dataclass
class Built:
    """The objects of a run, rebuilt identically from its settings (search and export)."""

    settings: RunSettings
    info: Any  # ModelInfo
    graph: Any
    fm: Any
    space: Any
    budgets: List[float]
    data: Any = None


def _demo_size(info: Any) -> Optional[int]:
    """64 px for the demo when the model accepts it (a fixed-size ViT does not)."""
    import torch

    if info.input_size[1] <= DEMO_IMG_SIZE:
        return None
    try:
        with torch.no_grad():
            info.model(torch.zeros(1, info.input_size[0], DEMO_IMG_SIZE, DEMO_IMG_SIZE))
    except Exception:  # noqa: BLE001 - any failure means: keep the model's own size
        return None
    return DEMO_IMG_SIZE


def build(settings: RunSettings, with_data: bool = True) -> Built:
    """Create the model, analyse it, make the bins, parse the budgets and build the data.

    Seeds first: the same settings give the same initial weights (``export`` of a ``uniform``
    run relies on it). The returned ``settings`` have the demo input size filled in.

    Example:
        >>> build(RunSettings("timm:test_resnet", search=SearchConfig(flops="50%"))).budgets  # doctest: +SKIP
        [8299040.0]
    """
    from ..bins import channel_order, channel_space, make_bins, min_space_flops, parse_budget
    from ..data import build_data, dataset_classes
    from ..flops import FlopsModel
    from ..graph import analyze
    from ..models import create
    from ..supernet.train import at_size, seed_everything

    s, t = settings, settings.train
    seed_everything(t.seed)
    info = create(s.model, pretrained=s.pretrained, weights=s.weights,
                  num_classes=len(dataset_classes(s.data)))
    size = _demo_size(info) if t.img_size is None and s.data == DEMO else None
    if size is not None:
        s = replace(s, train=replace(t, img_size=size))
    if s.train.img_size is not None:
        info = at_size(info, s.train.img_size)
    x = info.example_input()
    graph = analyze(info.model, x, source=info.name)
    fm = FlopsModel(graph, info.model, x)
    orders = channel_order(graph, info.model, s.bins.order)
    if s.search.method == "uniform":  # one-channel bins: the finest uniform multiplier
        space = channel_space(graph, fm, divisor=s.bins.divisor, order=orders)
    else:
        space = make_bins(graph, fm, beta=s.bins.beta, divisor=s.bins.divisor,
                          min_width=s.bins.min_width, order=orders, offset=s.train.offset)
    budgets = [parse_budget(b, fm.full, min_space_flops(space, fm)) for b in s.search.budgets]
    data = build_data(s.data, info, s.train) if with_data else None
    return Built(s, info, graph, fm, space, budgets, data)


def make_fitness(b: Built, supernet: Any, space: Any = None, offset: Optional[int] = None) -> Any:
    """The run's :class:`~cafeslim.search.Fitness` (the same batches in search and export).

    Example:
        >>> make_fitness(build(settings), Supernet(...))(space.num_bins).top1   # doctest: +SKIP
    """
    from .fitness import Fitness

    s = b.settings.search
    return Fitness(supernet, space or b.space, b.data.calib, b.data.val, recal_n=s.recal_batches,
                   eval_n=s.eval_batches, offset=offset, flops_model=b.fm,
                   channels_last=b.settings.train.channels_last)


# --------------------------------------------------------------------------- the run

@dataclass
class RunResult:
    """What :func:`run_search` produced: the run folder, ``result.json``'s content, seconds."""

    run_dir: Path
    result: Dict[str, Any]
    seconds: float


def _prepare_dir(run_dir: Path, resume: bool, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"run path {run_dir} exists and is not a folder")
    busy = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise CheckpointError(f"nothing to resume in {run_dir} (no {CONFIG}); run without "
                                  "--resume")
    elif busy and not force:
        raise OutputExistsError(f"run folder {run_dir} exists and is not empty; pass --resume to "
                                "continue it, --force to start it over, or --out for another")
    elif busy:
        for p in [run_dir / n for n in RUN_FILES] + sorted(run_dir.glob("stage[0-9]*")):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _check_resume(saved: RunSettings, new: RunSettings) -> RunSettings:
    """The saved settings, with only where-it-runs changes (workers, device, ...) taken."""
    if new.data == DEMO and new.train.img_size is None:  # build() filled in the demo's size
        new = replace(new, train=replace(new.train, img_size=saved.train.img_size))
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

    run_dir = Path(run_dir)
    if not settings.search.budgets:
        raise ConfigError("no FLOPs budget: pass --flops B (2G, 300M, 50%, 0.5x; several "
                          "comma-separated)")
    _prepare_dir(run_dir, resume, force)
    if resume:
        settings = _check_resume(load_settings(run_dir), settings)
    t0 = time.perf_counter()
    with distributed.session(settings.train.device) as dist_info:
        b = build(settings)
        main = dist_info.main
        if main and not resume:
            from ..bins import bins_json

            dump_yaml(b.settings.to_dict(), run_dir / CONFIG)
            for name, doc in (("graph.json", b.graph.to_json()),
                              ("bins.json", bins_json(b.space, b.info.name))):
                _write(run_dir / name, json.dumps(doc, indent=1))
        from .report import result_json, write_report

        out = _run_method(b, run_dir, resume=resume, progress=progress and main,
                         callback=callback, device=dist_info.device)
        result = result_json(b, out, time.perf_counter() - t0)
        if main:
            _write(run_dir / RESULT, json.dumps(result, indent=2))
            write_report(run_dir, result, space=b.space)
    return RunResult(run_dir, result, time.perf_counter() - t0)


# --------------------------------------------------------------------------- train and search

def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write((text + "\n").encode("utf-8")))


def _main() -> bool:  # rank 0 writes the files under torchrun
    from ..supernet.distributed import is_main

    return is_main()


def _train(b: Built, supernet: Any, space: Any, folder: Path, resume: bool, progress: bool,
           callback: Callback) -> Dict[str, Any]:
    from ..supernet.train import CHECKPOINT, METRICS, train_supernet

    cb = (lambda step, _stats: callback("train", step)) if callback else None
    res = train_supernet(supernet, space, b.data, b.settings.train, folder,
                         resume=resume and (folder / CHECKPOINT).exists(), progress=progress,
                         model_name=b.info.name, callback=cb)
    lines = (folder / METRICS).read_text().splitlines() if (folder / METRICS).exists() else []
    loss = json.loads(lines[-1]).get("loss") if lines else None  # also when no step ran now
    return {"steps": res.steps, "total_steps": res.total_steps, "epochs": round(res.epochs, 3),
            "seconds": round(res.seconds, 2), "images_per_s": round(res.images_per_s, 1),
            "final_loss": loss}


def _search(b: Built, supernet: Any, space: Any, run_dir: Path, budgets: List[float],
            state_path: Path, resume: bool, progress: bool, callback: Callback,
            stage: Optional[int] = None) -> tuple:
    from .report import SearchRecorder
    from .searchers import search_budgets

    s = b.settings.search
    try:
        states = json.loads(state_path.read_text())["budgets"] if resume and state_path.exists() else None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{state_path} is corrupt; delete it to search again") from None
    if s.searcher == "evolution":
        kwargs: Dict[str, Any] = dict(population=s.population, iterations=s.iterations,
                                      parents=min(s.parents, s.population))
        gens = s.iterations
    else:
        kwargs, gens = dict(n=s.samples), -(-s.samples // 40)  # RandomSearcher's chunk of 40
    label = ",".join(s.budgets) + (f" (stage {stage})" if stage else "")
    rec = SearchRecorder(run_dir / SEARCH_LOG, state_path, stage, states, progress, label,
                         gens * len(budgets), write=_main())

    def on_state(sts: List[Any]) -> None:
        done = rec.on_state(sts)
        if callback is not None:
            callback("search", done)

    fitness, t0 = make_fitness(b, supernet, space), time.perf_counter()
    try:
        results = search_budgets(fitness, space, b.fm, budgets, s.searcher,
                                 seed=b.settings.train.seed, states=states, on_eval=rec.on_eval,
                                 on_state=on_state, low=s.low,
                                 tag={"stage": stage} if stage else None, **kwargs)
    finally:
        rec.close()
    summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in fitness.stats.summary().items()}
    return results, {"seconds": round(time.perf_counter() - t0, 2),
                     "evaluated": sum(r.evaluated for r in results), **summary}


def _uniform(b: Built, supernet: Any, run_dir: Path) -> Dict[str, Any]:
    """The Uniform baseline: one multiplier per budget, measured like a search candidate."""
    from ..bins import uniform_widths
    from .searchers import SearchResult

    fitness = make_fitness(b, supernet, offset=0)
    results, lines = [], []
    for budget in b.budgets:
        res = fitness(uniform_widths(b.space, b.fm, budget, low=b.settings.search.low))
        rec = {"index": 0, "searcher": "uniform", "budget": budget, "generation": 0,
               **res.to_json(), "cached": False}
        lines.append(json.dumps(rec) + "\n")
        results.append(SearchResult(budget, res.k, res, [rec], "uniform"))
    if _main():
        _write(run_dir / SEARCH_LOG, "".join(lines).rstrip("\n"))
    return {"results": results, "checkpoints": [None] * len(results), "train": None,
            "search": {"evaluated": len(results), **fitness.stats.summary()}}


def _multistage(b: Built, supernet: Any, run_dir: Path, resume: bool, progress: bool,
                callback: Callback) -> Dict[str, Any]:
    """Algorithm 1: stage t trains in ``stage<t>/`` (stage 1 in the run folder) and searches."""
    from ..supernet.checkpoint import load_checkpoint
    from ..supernet.train import CHECKPOINT
    from .multistage import run_stages

    s = b.settings.search
    if len(b.budgets) != 1:
        raise ConfigError("multi-stage search (--stages > 1) takes one budget; run one search "
                          "per --flops value")
    folder = lambda t: run_dir if t == 1 else run_dir / f"stage{t}"  # noqa: E731
    done = json.loads((run_dir / STAGES).read_text()) if resume and (run_dir / STAGES).exists() else []
    info: Dict[str, Any] = {}

    def train_fn(stage: Any, space: Any) -> None:
        here = folder(stage.index)
        if stage.index > 1 and not (here / CHECKPOINT).exists():  # start from stage t-1
            supernet.load_state_dict(load_checkpoint(folder(stage.index - 1) / CHECKPOINT)["model"])
        supernet.space = space
        supernet.clear_bn_stats()  # statistics of the old weights
        info["train"] = _train(b, supernet, space, here, resume, progress, callback)

    def search_fn(stage: Any, space: Any) -> Any:
        res, info["search"] = _search(b, supernet, space, run_dir, [stage.budget],
                                      folder(stage.index) / STATE, resume, progress, callback,
                                      stage=stage.index)
        return res[0]

    def on_stage(sr: Any) -> None:
        done[sr.stage.index - 1:] = [sr.to_json()]
        if _main():
            _write(run_dir / STAGES, json.dumps(done))

    # The last stage always runs (instantly when finished): its SearchResult is the answer.
    out = run_stages(train_fn, search_fn, b.space, b.fm, b.budgets[0], stages=s.stages,
                     alpha=s.alpha, done=done[:s.stages - 1], on_stage=on_stage)
    ckpt = folder(s.stages) / CHECKPOINT
    return {"results": [out[-1].result], "checkpoints": [str(ckpt.relative_to(run_dir))],
            "space": out[-1].space, "stages": [sr.to_json() for sr in out], **info}


def _run_method(b: Built, run_dir: Path, *, resume: bool, progress: bool, callback: Callback,
                device: Any) -> Dict[str, Any]:
    from ..supernet import Supernet

    s = b.settings.search
    supernet = Supernet(b.info.model, b.graph, b.space)
    if s.method == "uniform":
        if s.stages > 1:
            raise ConfigError("--method uniform trains no supernet: it takes no --stages")
        return _uniform(b, supernet.to(device), run_dir)
    if s.stages > 1:
        return _multistage(b, supernet, run_dir, resume, progress, callback)
    train = _train(b, supernet, b.space, run_dir, resume, progress, callback)
    results, search = _search(b, supernet, b.space, run_dir, b.budgets, run_dir / STATE, resume,
                              progress, callback)
    return {"results": results, "checkpoints": ["last.pt"] * len(results), "train": train,
            "search": search}


__all__ = ["BinsConfig", "Built", "DEMO_PRESET", "RunResult", "RunSettings", "SearchConfig",
           "build", "load_settings", "make_fitness",
           "run_search"]
