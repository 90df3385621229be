"""What ``cafeslim train TARGET`` trains: a run's chosen sub-network, an export, or a model.

* a **run folder** (``config.yaml`` + ``result.json``): the IndexSpec the search chose (for
  ``--budget B`` when it searched several), on the run's data and input size;
* an **export folder** (``widths.json`` + ``model.pt``): that architecture;
* a **model name**: the original model itself (e.g. to make a teacher on the user's data).

:func:`resolve_target` only reads files (and fails with one line for anything else);
:func:`build_student` creates the network with ``--init scratch`` (the family's own
initialisation at the searched widths, :mod:`.init`) or ``inherit`` (the supernet's weights,
BatchNorm recalibrated as ``cafeslim export`` does, or the export's weights, or the model's
``--pretrained``/``--weights``).

Example:
    >>> t = resolve_target("runs/test_resnet-50pct")                      # doctest: +SKIP
    >>> t.kind, t.source, t.data                                          # doctest: +SKIP
    ('run', 'timm:test_resnet', 'demo')
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..config import BUILTIN_IMG_SIZE, DEMO, load_settings, task_name
from ..errors import CheckpointError, ConfigError


@dataclass
class Target:
    """A resolved TARGET.

    Attributes:
        kind: ``run``, ``export`` or ``model``.
        name: the TARGET as given; path: the run or export folder (None for a model).
        source: the original model's name.
        data: the data it was searched/exported on (None: unknown).
        img_size: its square input size (None: the model's own).
        pretrained, weights: the original's weights.
        seed: the run's seed (initial weights of a uniform run).
        budget: the run's budget picked; spec: the IndexSpec (None: the full model).
        meta: the export's ``widths.json`` (export targets).
        checkpoint: the run's supernet checkpoint (None: no supernet, e.g. ``uniform``).
        task: the run's or export's task (None for a model: the ``--task`` flag decides).
    """

    kind: str
    name: str
    path: Optional[Path]
    source: str
    data: Optional[str] = None
    img_size: Optional[int] = None
    pretrained: bool = False
    weights: Optional[str] = None
    seed: int = 0
    budget: Optional[str] = None
    spec: Optional[Dict[int, Any]] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    task: Optional[str] = None

    @property
    def has_weights(self) -> bool:
        """Whether the original has real (not random) weights: a teacher worth asking."""
        return bool(self.pretrained or self.weights)

    def default_out(self) -> Path:
        """``RUN/train`` (``RUN/train/<budget>`` for several), ``EXPORT/train``, ``runs/<model>-train``."""
        if self.kind == "model":
            return Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_",
                                         f"{self.source.split(':')[-1]}-train")
        folder = self.path if self.path is not None else Path(self.name)
        if self.kind == "run" and self.meta.get("budgets", 1) > 1:
            return folder / "train" / str(self.budget).replace("%", "pct").replace(" ", "")
        return folder / "train"


def _looks_like_path(target: str) -> bool:
    return ":" not in target and ("/" in target or "\\" in target or Path(target).exists())


def resolve_target(target: str, budget: Optional[str] = None) -> Target:
    """Identify TARGET from its files (nothing is built yet).

    Raises:
        CheckpointError: a path that is neither a finished run nor an export folder.
        ConfigError: ``--budget`` missing or unknown for a run.
        ModelNotFoundError: a name that is no model.

    Example:
        >>> resolve_target("timm:test_resnet").kind
        'model'
    """
    from ..export.widths import read_widths_json
    from ..pipeline.report import read_result
    from ..pipeline.run_export import pick_budget

    if not _looks_like_path(target):
        from ..models.create import resolve_name

        resolve_name(target)  # an unknown name fails here, with the closest names
        if budget is not None:
            raise ConfigError("--budget picks a budget of a search run; TARGET is a model")
        return Target("model", target, None, target)
    path = Path(target)
    if path.is_file() and path.suffix == ".pt":
        path = path.parent
    if (path / "widths.json").is_file():
        meta = read_widths_json(path / "widths.json")
        shape = meta.get("input_shape") or []
        return Target("export", target, path, str(meta.get("source")), data=meta.get("data"),
                      img_size=int(shape[-1]) if shape else None,
                      pretrained=bool(meta.get("pretrained")), weights=meta.get("weights"),
                      seed=int(meta.get("seed") or 0), spec=meta.get("index_spec"), meta=meta,
                      task=task_name(meta.get("task")))
    if not path.is_dir() or not ((path / "result.json").is_file() or (path / "config.yaml").is_file()):
        raise CheckpointError(f"{target} is neither a cafeslim run folder (config.yaml + "
                              "result.json), an export folder (widths.json) nor a model name")
    result = read_result(path)
    settings = load_settings(path)
    entry = pick_budget(result, budget)
    from ..graph import spec_from_json

    ckpt = path / entry["checkpoint"] if entry.get("checkpoint") else None
    return Target("run", target, path, settings.model, data=settings.data,
                  img_size=settings.train.img_size, pretrained=settings.pretrained,
                  weights=settings.weights, seed=settings.train.seed, budget=entry["budget"],
                  spec=spec_from_json(entry["spec"]), checkpoint=ckpt, task=settings.task,
                  meta={"budgets": len(result["budgets"]), "method": result.get("method"),
                        "top1_dval": entry.get("top1"), "num_classes": result.get("num_classes")})


def original(t: Target, num_classes: int, img_size: Optional[int], *,
             weights: bool = True) -> Any:
    """The original model of a target as a :class:`~cafeslim.models.ModelInfo` at ``img_size``.

    Args:
        weights: load the original's pretrained/file weights (False: a fresh initialisation).

    Example:
        >>> original(resolve_target("timm:test_resnet"), 10, 32).input_size
        (3, 32, 32)
    """
    from ..models import create
    from ..pipeline.objects import at_size, demo_size

    info = create(t.source, pretrained=t.pretrained and weights,
                  weights=t.weights if weights else None, num_classes=num_classes)
    size = img_size if img_size is not None else t.img_size
    if size is None and (t.data or DEMO) in BUILTIN_IMG_SIZE:
        size = demo_size(info, BUILTIN_IMG_SIZE[t.data or DEMO])
    return at_size(info, size) if size is not None else info


def load_module(path: Path) -> nn.Module:
    """A whole pickled model (``model.pt`` of an export), on CPU.

    Raises:
        CheckpointError: no such file, unloadable, or not an ``nn.Module``.
    """
    if not path.is_file():
        raise CheckpointError(f"{path.parent} holds no model.pt to train (model.pt2 cannot be "
                              "trained); export it again with the pt format")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of all kinds mean: unusable
        raise CheckpointError(f"cannot load {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path} does not hold a whole model (nn.Module)")
    return model


def _inherit_run(t: Target) -> Tuple[nn.Module, Dict[str, Any]]:
    """The run's sub-network with supernet weights and recalibrated BN (``cafeslim export``)."""
    from ..export.widths import read_widths_json
    from ..pipeline.run_export import export_run

    with tempfile.TemporaryDirectory() as tmp:
        export_run(t.path or Path(t.name), t.budget, init="inherit", formats=("pt",), out_dir=Path(tmp) / "x")
        meta = read_widths_json(Path(tmp) / "x" / "widths.json")
        return load_module(Path(tmp) / "x" / "model.pt"), meta


def build_student(t: Target, init: str, num_classes: int, img_size: Optional[int],
                  seed: int) -> Tuple[nn.Module, Any, Any, Dict[str, Any]]:
    """The network to train: ``(model, original ModelInfo, graph, widths.json base)``.

    ``scratch`` seeds with ``seed`` and uses the family's own initialisation at the target's
    widths; ``inherit`` keeps the supernet's, the export's or the original's weights.

    Example:
        >>> model, info, graph, meta = build_student(t, "scratch", 10, 64, seed=0)  # doctest: +SKIP
    """
    from ..pipeline.objects import analyze_info
    from ..supernet.train import seed_everything
    from .init import scratch_model

    seed_everything(seed)
    info = original(t, num_classes, img_size, weights=(init == "inherit"))
    graph = analyze_info(info, flops=False).graph
    if t.kind == "model":
        return info.model, info, graph, {}
    spec = graph.validate_spec(t.spec if t.kind == "run" else _spec(t.spec))
    if init == "scratch":
        fresh = original(t, num_classes, img_size, weights=False).model
        return scratch_model(fresh, graph, spec), info, graph, dict(t.meta if t.kind == "export" else {})
    if t.kind == "export":
        return load_module(Path(t.path or t.name) / "model.pt"), info, graph, dict(t.meta)
    model, meta = _inherit_run(t)
    return model, info, graph, meta


def _spec(data: Any) -> Dict[int, Any]:
    from ..graph import spec_from_json

    return spec_from_json(data)


def head_classes(model: nn.Module, example: torch.Tensor, task: Any = None) -> int:
    """The number of classes (labels) the model predicts, read off one forward in eval mode.

    ``task`` (:mod:`cafeslim.tasks`; None: classification) picks the scored output and its
    class axis (a segmentation model's ``out`` channels).

    Example:
        >>> head_classes(nn.Sequential(nn.Flatten(), nn.Linear(12, 7)), torch.zeros(1, 3, 2, 2))
        7
    """
    from ..tasks import get_task

    was = model.training
    with torch.no_grad():
        n = get_task(task).num_outputs(model.eval()(example))
    model.train(was)
    return n


__all__ = ["Target", "build_student", "head_classes", "load_module", "original", "resolve_target"]
