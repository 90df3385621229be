"""``cafeslim train TARGET``: the training folder around :func:`~cafeslim.training.train`.

:func:`train_target` resolves TARGET (:mod:`.target`), builds the student with its
initialisation and the teacher, checks the data against the model's head, trains, exports the
trained model again (``model.pt``, ``model.pt2``, ``model.onnx`` checked with onnxruntime,
``widths.json`` now carrying the trained test accuracy) and writes ``report.md``. Everything
that can fail on user input fails before the first file is written, so an error overwrites
nothing.

Example:
    >>> res = train_target("runs/test_resnet-50pct", RetrainConfig(epochs=15))   # doctest: +SKIP
    >>> res.outcome.test_top1                                                   # doctest: +SKIP
    0.96
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Tuple, Union

from torch import nn

from ..config import DEMO, RetrainConfig, dump_yaml, ensure_empty_dir, load_settings, to_dict
from ..errors import CheckpointError, ConfigError, DataError
from ..export.formats import FORMATS
from .loop import LAST, TrainOutcome, train
from .recipe import auto_bn_momentum
from .target import Target, build_student, head_classes, load_module, original, resolve_target

TRAIN_FORMAT = "cafeslim.train/1"
WEIGHTS = "weights.safetensors"  # the trained state dict, for --weights


@dataclass
class TrainRun:
    """What :func:`train_target` did: the folder, the target, the outcome and the export."""

    out_dir: Path
    target: Target
    outcome: TrainOutcome
    teacher: str
    files: Dict[str, Path] = field(default_factory=dict)
    export_errors: Dict[str, str] = field(default_factory=dict)
    main: bool = True  # False on the ranks other than 0 under torchrun (they write nothing)
    task: str = "classification"
    notes: List[str] = field(default_factory=list)


def _supernet_teacher(t: Target) -> nn.Module:
    """The supernet at full width, BN recalibrated on the run's batches."""
    from ..pipeline.objects import build, make_fitness
    from ..supernet import Supernet
    from ..supernet.checkpoint import load_checkpoint

    if t.kind != "run" or t.checkpoint is None or t.path is None:
        raise ConfigError("--teacher supernet needs a search run that trained a supernet "
                          f"({t.name} is {'a ' + str(t.meta.get('method')) + ' run' if t.kind == 'run' else 'not a run'})")
    b = build(load_settings(t.path))
    net = Supernet(b.info.model, b.graph, b.space)
    ckpt = load_checkpoint(t.checkpoint)
    if (ckpt.get("fingerprint") or {}).get("model") != b.info.name:
        raise CheckpointError(f"checkpoint {t.checkpoint} was not made for {b.info.name}")
    net.load_state_dict(ckpt["model"])
    full = b.graph.prefix_spec(b.graph.full_widths())
    make_fitness(b, net, offset=0).score_spec(full)
    return net.export_subnet(full)


def make_teacher(t: Target, choice: Optional[str], num_classes: int,
                 img_size: int) -> Tuple[Optional[nn.Module], str]:
    """The teacher module (or None) and its description, for ``--teacher``.

    ``None`` means ``original`` when the original has weights (``--pretrained``/``--weights``
    of the run or export), else ``none``.

    Raises:
        ConfigError: ``original`` of a model target or of an original with random weights,
            ``supernet`` without a supernet.

    Example:
        >>> make_teacher(resolve_target("timm:test_resnet"), None, 10, 32)
        (None, 'none')
    """
    choice = choice or ("original" if t.has_weights and t.kind != "model" else "none")
    if choice == "none":
        return None, "none"
    if choice == "original":
        if t.kind == "model":
            raise ConfigError("TARGET is the original model itself: --teacher original would "
                              "teach it itself; pass --teacher MODEL or none")
        if not t.has_weights:
            raise ConfigError(f"the original {t.source} has random weights (no --pretrained or "
                              "--weights in the run): it can teach nothing; pass --teacher none")
        return original(t, num_classes, img_size).model.eval(), f"original ({t.source})"
    if choice == "supernet":
        return _supernet_teacher(t).eval(), "supernet (full width)"
    path = Path(choice)
    if path.is_dir() or path.suffix == ".pt":
        return load_module(path / "model.pt" if path.is_dir() else path).eval(), str(path)
    from ..models import create
    from ..pipeline.objects import at_size

    return at_size(create(choice, num_classes=num_classes), img_size).model.eval(), choice


def train_task(t: Target, cfg: RetrainConfig) -> Any:
    """The task to train: ``--task`` (``cfg.task``), else the run's or export's, else classification.

    Raises:
        ConfigError: ``--task`` other than the task a run was searched or an export made for.

    Example:
        >>> train_task(resolve_target("timm:test_resnet"), RetrainConfig()).name
        'classification'
    """
    from ..tasks import get_task

    if cfg.task is not None and t.task is not None and cfg.task != t.task:
        raise ConfigError(f"{t.name} was made for {t.task}, not --task {cfg.task}; its head "
                          "and metric are that task's")
    return get_task(cfg.task or t.task)


def _widths_meta(t: Target, meta: Dict[str, Any], graph: Any, info: Any, model: nn.Module,
                 x: Any) -> Dict[str, Any]:
    """``widths.json`` of the trained model: the target's, or made from its graph."""
    from ..export.widths import widths_info
    from ..flops import count_flops

    flops = float(count_flops(model, x))
    if meta:
        return {**meta, "flops": {**(meta.get("flops") or {}), "slim": flops}}
    spec = t.spec if t.spec is not None else graph.prefix_spec(graph.full_widths())
    return widths_info(graph, spec, source=info.name, slim_model=model, original=info.model,
                       flops=flops, full_flops=float(count_flops(info.model, x)))


def train_target(target: str, cfg: RetrainConfig = RetrainConfig(), *, data: Optional[str] = None,
                 budget: Optional[str] = None, out_dir: Union[str, Path, None] = None,
                 resume: bool = False, force: bool = False,
                 formats: Collection[str] = FORMATS, progress: bool = True) -> TrainRun:
    """Train TARGET (a run's chosen sub-network, an export, or a model) into a folder.

    Args:
        target: run folder, export folder or model name (see :mod:`.target`).
        cfg: the recipe and ``init``/``teacher`` choices.
        data: ``demo`` or an ImageNet-layout folder (default: the target's own data, or demo).
        budget: which of a run's budgets.
        out_dir: default ``RUN/train``, ``EXPORT/train`` or ``runs/<model>-train``.
        resume: continue an interrupted training in ``out_dir``.
        force: start over in a non-empty ``out_dir``.
        formats: export formats of the trained model.
        progress: progress bar on stderr.

    Raises:
        CafeslimError: a TARGET that is no run, export or model; data whose classes do not
            match the model's head; a missing, corrupt or foreign checkpoint on resume.

    Under ``torchrun --nproc_per_node N`` every rank trains the same model on its share of
    each global batch (``-b`` per process, DDP); only rank 0 checks, creates or empties the
    folder, writes files and draws progress.

    Example:
        >>> train_target("timm:test_resnet", RetrainConfig(epochs=1)).outcome.epochs  # doctest: +SKIP
        1
    """
    from ..supernet import distributed

    with distributed.session(cfg.device) as info:
        res = _train_target(target, cfg, data, budget, out_dir, resume, force, formats,
                            progress and info.main)
        res.main = info.main
        return res


def _train_target(target: str, cfg: RetrainConfig, data: Optional[str], budget: Optional[str],
                  out_dir: Union[str, Path, None], resume: bool, force: bool,
                  formats: Collection[str], progress: bool) -> TrainRun:
    from ..data import build_data, dataset_classes
    from ..supernet.distributed import is_main, on_main

    t = resolve_target(target, budget)
    task = train_task(t, cfg)
    cfg = replace(cfg, task=task.name)  # config.yaml and the checkpoint record the task
    task.check_recipe(cfg)  # before anything is written
    source = data or t.data or DEMO
    out = Path(out_dir) if out_dir is not None else t.default_out()
    if resume:
        if not (out / LAST).is_file():
            raise CheckpointError(f"nothing to resume in {out} (no {LAST})")
    else:  # rank 0 alone empties it; the others wait and share its verdict
        on_main(lambda: ensure_empty_dir(out, force, what="training folder",
                                         hint="pass --resume to continue it, --force to start "
                                              "over, or --out"))
    classes = dataset_classes(source, task)
    # A run's or export's head keeps its classes: other data must then fail, not retrain a head.
    wanted = (cfg.num_classes or len(classes)) if t.kind == "model" else \
        int(t.meta.get("num_classes") or 0) or len(classes)
    model, info, graph, meta = build_student(t, cfg.init, wanted, cfg.img_size, cfg.seed)
    x = info.example_input()
    head = head_classes(model, x, task)
    if cfg.num_classes is not None and head != cfg.num_classes:
        raise ConfigError(f"{t.name} has a head of {head} classes, not --num-classes "
                          f"{cfg.num_classes}; a run or export keeps its head")
    if head != len(classes):
        raise DataError(f"{source} has {len(classes)} classes, the model's head has {head}; "
                        "train it on data with the same classes (or train the model name anew)")
    size = int(info.input_size[-1])
    teacher, teacher_name = make_teacher(t, cfg.teacher, len(classes), size)
    if teacher is not None and head_classes(teacher, x, task) != head:
        raise ConfigError(f"the teacher {teacher_name} has {head_classes(teacher, x, task)} "
                          f"classes, the student {head}")
    loaders = build_data(source, info, replace(cfg, img_size=size), task)
    if not resume and is_main():
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml({"format": TRAIN_FORMAT, "target": target, "budget": t.budget, "data": source,
                   "train": cfg}, out / "config.yaml")
    notes = bn_notes(model, cfg, cfg.epochs * loaders.steps_per_epoch)
    outcome = train(model, loaders, cfg, teacher=teacher, out_dir=out, resume=resume,
                    progress=progress, name=f"{info.name}:{t.kind}:{cfg.init}", task=task)
    if not is_main():  # rank 0 exports and reports the model every rank holds
        return TrainRun(out, t, outcome, teacher_name, main=False, task=task.name)
    res = _finish(t, out, outcome, teacher_name, meta, graph, info, x, source, loaders, cfg,
                  formats, task)
    res.notes = notes
    return res


def _finish(t: Target, out: Path, outcome: TrainOutcome, teacher_name: str,
            meta: Dict[str, Any], graph: Any, info: Any, x: Any, source: str, loaders: Any,
            cfg: RetrainConfig, formats: Collection[str], task: Any) -> TrainRun:
    """Export the trained model again and write ``report.md``."""
    from ..export.formats import export_model
    from .report import write_report

    model = outcome.model
    m = task.metric  # classification: test_top1, test_top5, holdout_top1, top1_test
    trained = {**{f"test_{k}": v for k, v in outcome.test.items()},
               f"holdout_{m}": outcome.holdout_score, "best_epoch": outcome.best_epoch,
               "epochs": outcome.epochs, "init": cfg.init, "teacher": teacher_name,
               "data": source, "recipe": to_dict(cfg)}
    meta = {**_widths_meta(t, meta, graph, info, model, x), "task": task.name, "data": source,
            "num_classes": loaders.num_classes, "img_size": int(info.input_size[-1]),
            "seed": cfg.seed, "pretrained": t.pretrained, "weights": t.weights,
            f"{m}_test": outcome.test_score, "trained": trained}
    res = export_model(model, x, out, set(formats), meta)
    weights = save_weights(model, out / WEIGHTS)
    summary = {"target": t.name, "source": info.name, "init": cfg.init, "teacher": teacher_name,
               "data": source, "sizes": loaders.sizes, "task": task.name, **trained,
               f"best_holdout_{m}": outcome.best_holdout_score,
               "images_per_s": outcome.images_per_s, "seconds": outcome.seconds,
               "export_errors": res.errors}
    write_report(out, summary, outcome.history, task)
    return TrainRun(out, t, outcome, teacher_name, {**res.paths, "weights": weights},
                    dict(res.errors), task=task.name)


def bn_notes(model: nn.Module, cfg: RetrainConfig, steps: int) -> List[str]:
    """A note when the training changes the model's BatchNorm momentum on its own
    (:func:`~cafeslim.training.recipe.auto_bn_momentum`).

    Example:
        >>> bn_notes(nn.BatchNorm2d(3, momentum=0.01), RetrainConfig(), 300)[0][:29]
        'BatchNorm momentum 0.01 and 3'
    """
    auto = auto_bn_momentum(model, steps) if cfg.bn_momentum is None else None
    if auto is None:
        return []
    low = min(m.momentum for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None)
    return [f"BatchNorm momentum {low:g} and {steps} training steps: the running statistics "
            f"would lag the weights, so they are trained with momentum {auto:g} "
            "(--bn-momentum M sets it)"]


def save_weights(model: nn.Module, path: Path) -> Path:
    """The trained weights as a ``.safetensors`` state dict, atomically.

    ``--weights`` takes it (``cafeslim search MODEL --weights RUN/weights.safetensors``): a
    model trained by ``cafeslim train MODEL`` becomes a pretrained start for a search.

    Example:
        >>> save_weights(nn.Linear(2, 3), Path("w.safetensors")).suffix   # doctest: +SKIP
        '.safetensors'
    """
    from safetensors.torch import save

    from ..config import atomic_write

    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    atomic_write(path, lambda fh: fh.write(blob))
    return path


__all__ = ["TRAIN_FORMAT", "TrainRun", "WEIGHTS", "bn_notes", "make_teacher", "save_weights",
           "train_target", "train_task"]
