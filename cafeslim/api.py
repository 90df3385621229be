"""The Python API: the pipeline's verbs on plain objects (an ``nn.Module``, a graph, a spec).

Each verb is a thin layer over the package's own machinery, so what a script gets is exactly
what ``cafeslim search`` / ``export`` do; the run folder, resume and reports of the command
line (:mod:`cafeslim.pipeline`) are built on the same functions::

    graph = cafeslim.analyze(model, example_input)            # channel groups
    space = cafeslim.make_bins(graph, beta=1.0)               # FLOPs-sensitive bins
    net = cafeslim.Supernet(model, graph, space)              # locally free supernet
    cafeslim.minmin_step(net, images, targets, loss_fn, opt)  # inside any training loop
    result = cafeslim.search_widths(net, val_batches, recal_batches, budget="50%")

    task = cafeslim.get_task("segmentation")                  # or "multilabel"
    cafeslim.minmin_step(net, images, masks, task.loss, opt)  # per-pixel cross-entropy
    result = cafeslim.search_widths(net, val_batches, recal_batches, task=task)  # D_val mIoU
    small = cafeslim.slim(model, graph, result.spec)          # physically smaller copy
    cafeslim.export_files(small, example_input, "out", graph=graph, spec=result.spec)
    det = cafeslim.transfer_widths(cafeslim.create("tv:fasterrcnn_resnet50_fpn"),
                                   "runs/r50/export/widths.json").model   # backbone widths

(``search_widths`` and ``export_files`` rather than ``search`` and ``export``: those are the
names of the subpackages ``cafeslim.search`` and ``cafeslim.export``, and a function cannot
share a name with a subpackage without breaking ``import cafeslim.search``.)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .config import DEMO_PRESET, MinMinConfig, SearchConfig, ensure_empty_dir
from .errors import ConfigError, ExportError
from .export.formats import FORMATS, ExportResult, export_model
from .export.widths import widths_info
from .graph import IndexSpec, analyze
from .supernet import StepStats, Supernet, unwrap

Batches = Union[Iterable[Any], Callable[[], Iterable[Any]]]
API_SEARCH = SearchConfig(**DEMO_PRESET["search"])
"""The default of :func:`search_widths`: a small evolution (12 × 6, 2 recalibration batches) that
suits a call in a script; pass a :class:`~cafeslim.config.SearchConfig` for the paper's."""
_RNGS: "weakref.WeakKeyDictionary[nn.Module, np.random.Generator]" = weakref.WeakKeyDictionary()


def make_bins(graph: Any, flops_model: Any = None, *, beta: float = 1.0, **options: Any) -> Any:
    """FLOPs-sensitive bins of a graph (Eq. 6-9); the FLOPs model is built when not given.

    Args:
        graph: from :func:`analyze`.
        flops_model: a :class:`~cafeslim.flops.FlopsModel` of the graph (None: built from it).
        beta: β of Eq. 9.
        **options: ``divisor``, ``min_width``, ``order``, ``offset``, ... of
            :func:`cafeslim.bins.make_bins`.

    Example:
        >>> space = make_bins(analyze(model, x), beta=1.0)                   # doctest: +SKIP
        >>> space.log10_size                                                 # doctest: +SKIP
    """
    from .bins import make_bins as bins_of
    from .flops import FlopsModel

    fm = flops_model if flops_model is not None else FlopsModel(graph)
    return bins_of(graph, fm, beta=beta, **options)


def minmin_step(net: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
                optimizer: torch.optim.Optimizer, config: Optional[MinMinConfig] = None, *,
                rng: Optional[np.random.Generator] = None, progress: float = 1.0,
                **kwargs: Any) -> StepStats:
    """One min-min training step of a supernet, for any training loop (Eq. 11-12).

    Samples a width, trains its lowest-loss candidate and steps ``optimizer``. Learning-rate
    schedules, clipping and logging stay the caller's.

    Args:
        net: a :class:`Supernet` (or a DDP wrapper of one), in train mode.
        images, targets: one batch on the supernet's device.
        loss_fn: ``loss_fn(outputs, targets)`` -> scalar, e.g. ``F.cross_entropy`` or a
            task's ``cafeslim.get_task("segmentation").loss``.
        optimizer: over ``net.parameters()``.
        config: the step's settings (default: the space's offset, nothing else).
        rng: the width sampler (default: one generator per supernet, seeded 0; under DDP pass
            one seeded identically on every rank).
        progress: fraction of training done (for ``config.minmin_start``).
        **kwargs: ``scaler``, ``autocast_dtype`` of :func:`cafeslim.supernet.minmin_step`.

    Example:
        >>> for images, targets in loader:                                   # doctest: +SKIP
        ...     stats = minmin_step(net, images, targets, F.cross_entropy, opt)
    """
    from .supernet.minmin import minmin_step as step

    inner = unwrap(net)
    if inner.space is None:
        raise ConfigError("the supernet has no search space: Supernet(model, graph, space)")
    cfg = config if config is not None else MinMinConfig(offset=inner.space.offset)
    if rng is None:
        rng = _RNGS.setdefault(inner, np.random.default_rng(0))
    return step(net, inner.space, images, targets, loss_fn, optimizer, cfg, rng, progress,
                **kwargs)


@dataclass(frozen=True)
class SearchOutcome:
    """What :func:`search_widths` found for one budget.

    Attributes:
        spec: the winning IndexSpec (give it to :func:`slim`).
        widths: searchable group id -> channels kept.
        flops: FLOPs of the winner by the FLOPs model (equals fvcore on the slimmed model).
        score: its D_val score after BN recalibration — the task's metric: top-1, mIoU, mean
            label accuracy (a selection score, not an accuracy).
        budget: the budget in FLOPs; k: the winner's bins per group.
        result: the searcher's full :class:`~cafeslim.search.SearchResult` (history, state).
    """

    spec: IndexSpec
    widths: Dict[int, int]
    flops: float
    score: float
    budget: float
    k: Tuple[int, ...]
    result: Any


def search_widths(net: nn.Module, val_batches: Batches, recal_batches: Batches,
           budget: Union[str, float] = "50%", config: Optional[SearchConfig] = None, *,
           flops_model: Any = None, seed: int = 0, task: Any = None) -> SearchOutcome:
    """Max-max search (Eq. 13) of the best widths of a trained supernet under one budget.

    Args:
        net: a trained :class:`Supernet`.
        val_batches: ``(images, labels)`` batches the widths are scored on (D_val).
        recal_batches: training batches for BatchNorm recalibration.
        budget: ``2G``, ``300M``, ``50%``, ``0.5x`` or a number of FLOPs.
        config: searcher and its sizes (default :data:`API_SEARCH`); ``flops`` and the
            method fields are not used here.
        flops_model: the graph's FLOPs model (None: built from ``net.graph``).
        seed: seeds the search.
        task: a :mod:`cafeslim.tasks` task or its name, whose metric scores the widths on
            ``val_batches`` (None: classification's top-1), e.g. ``get_task("segmentation")``.

    Raises:
        BudgetError: a malformed or unreachable budget.

    Example:
        >>> result = search_widths(net, val, recal, budget="50%")                    # doctest: +SKIP
        >>> result.flops <= result.budget                                    # doctest: +SKIP
        True
    """
    from .bins import min_space_flops, parse_budget
    from .flops import FlopsModel
    from .search import Fitness, search_with

    cfg = config if config is not None else API_SEARCH
    inner = unwrap(net)
    space, graph = inner.space, inner.graph
    fm = flops_model if flops_model is not None else FlopsModel(graph)
    limit = parse_budget(budget, fm.full, min_space_flops(space, fm))
    fitness = Fitness(net, space, recal_batches, val_batches, recal_n=cfg.recal_batches,
                      eval_n=cfg.eval_batches, flops_model=fm, task=task)
    res = search_with(cfg, fitness, space, fm, [limit], seed=seed)[0]
    spec = res.best.best_spec
    return SearchOutcome(spec, graph.widths_of(spec), float(res.best.flops), float(res.best.top1),
                         float(limit), tuple(res.best_k), res)


def export_files(model: nn.Module, example_input: torch.Tensor, out_dir: Union[str, Path], *,
           graph: Any = None, spec: Optional[IndexSpec] = None, original: Optional[nn.Module] = None,
           formats: Collection[str] = FORMATS, force: bool = False,
           strict: bool = True) -> ExportResult:
    """Write a (slimmed) model as ``model.pt``, ``model.pt2``, ``model.onnx`` and ``widths.json``.

    Every file is checked against eager PyTorch. ``widths.json`` (per-layer channels, FLOPs,
    params, the IndexSpec) needs the full model's ``graph`` and the ``spec``.

    Args:
        model: the model to write (e.g. from :func:`slim`).
        example_input: one input batch.
        out_dir: an empty or new folder (any folder with ``force``).
        graph, spec: the full model's graph and the kept IndexSpec, for ``widths.json``.
        original: the full model, for before/after channels and FLOPs in ``widths.json``.
        formats: subset of ``pt``, ``pt2``, ``onnx``.
        force: write into a non-empty folder.
        strict: raise :class:`~cafeslim.errors.ExportError` when a format failed (the others
            are still written).

    Example:
        >>> export_files(small, x, "exported", graph=graph, spec=result.spec).paths["onnx"]  # doctest: +SKIP
        PosixPath('exported/model.onnx')
    """
    from .flops import count_flops

    ensure_empty_dir(out_dir, force)
    meta = None
    if (graph is None) != (spec is None):
        raise ConfigError("widths.json needs both graph= and spec= (or neither)")
    if graph is not None:
        full = float(count_flops(original, example_input)) if original is not None else None
        meta = widths_info(graph, spec, slim_model=model, original=original,
                           flops=float(count_flops(model, example_input)), full_flops=full)
    res = export_model(model, example_input, out_dir, set(formats), meta)
    if strict and res.errors:
        raise ExportError("; ".join(f"{k}: {why}" for k, why in sorted(res.errors.items())))
    return res


@dataclass(frozen=True)
class Transfer:
    """What :func:`transfer_widths` made.

    Attributes:
        model: the whole target model with its backbone slimmed (a copy; it takes and returns
            what the original does: images in, detections or the ``out`` dict out).
        plan: the :class:`~cafeslim.export.transfer.TransferPlan` (prefixes, groups applied and
            not applied, the target's IndexSpec).
        graph: the target's channel graph (of its traced part).
        example_input: the traced part's input the FLOPs were counted at.
        flops: ``backbone``, ``traced_part`` and ``whole`` -> (before, after), fvcore's count
            of the real modules. ``whole`` is the traced part where that is the whole model,
            None for a detector: its heads run on the proposals NMS keeps, a data-dependent
            count (unchanged heads; fvcore's total moves with the proposals, not the widths).
    """

    model: nn.Module
    plan: Any
    graph: Any
    example_input: torch.Tensor
    flops: Dict[str, Optional[Tuple[float, float]]]


def _inputs_of(run: Callable[[], Any], module: nn.Module) -> Tuple[Any, ...]:
    """The positional arguments ``module`` receives during ``run()`` (its first call)."""
    seen: list = []
    hook = module.register_forward_pre_hook(lambda m, args: seen.append(args) if not seen else None)
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return seen[0]


def _flops_of(root: nn.Module, qualname: str, x: Any) -> float:
    """fvcore FLOPs of ``root``'s sub-module ``qualname`` as it runs inside ``root(x)``."""
    from .flops import count_flops

    mod = root.get_submodule(qualname) if qualname else root
    args = (x,) if mod is root else _inputs_of(lambda: root.eval()(x), mod)
    return float(count_flops(mod, args if len(args) > 1 else args[0]))


def transfer_widths(target: Any, widths: Union[str, Path, Dict[str, Any]], *,
                    example_input: Optional[torch.Tensor] = None, part: str = "") -> Transfer:
    """Give a target model's backbone the widths of another model's export (paper Table 5).

    The widths file's module paths are matched to the target's by their longest common
    prefix pair (``layer1.0.conv1`` ↔ ``backbone.body.layer1.0.conv1``); see
    :mod:`cafeslim.export.transfer` for what is refused and what is reported.

    Args:
        target: a :class:`~cafeslim.models.ModelInfo` (from :func:`cafeslim.create`, which
            knows a detector's traced part and inputs) or an ``nn.Module``.
        widths: a ``widths.json`` path or its parsed content.
        example_input: the traced part's input (``nn.Module`` targets only).
        part: qualname of the sub-module to trace (``nn.Module`` targets; "" = the whole).

    Raises:
        TransferError: the backbones do not match (one line saying where).

    Example:
        >>> t = transfer_widths(create("tv:deeplabv3_resnet50", img_size=128), "r50/widths.json")  # doctest: +SKIP
        >>> t.model(torch.randn(1, 3, 128, 128))["out"].shape                   # doctest: +SKIP
        torch.Size([1, 21, 128, 128])
    """
    from .export.transfer import plan_transfer, read_widths
    from .export.whole import slim_whole
    from .flops import count_flops

    if isinstance(target, nn.Module):
        if example_input is None:
            raise ConfigError("transfer_widths(module, ...) needs example_input=")
        model, x = target.eval(), example_input
    else:
        model, part, x = target.model, target.part, target.example_input()
    info = read_widths(widths) if not isinstance(widths, dict) else widths
    analysed = model.get_submodule(part) if part else model
    graph = analyze(analysed, x, source=getattr(target, "name", type(model).__name__),
                    output_reason=getattr(target, "output_reason", "model output"))
    plan = plan_transfer(info, graph, model, part)
    small = slim_whole(model, part, graph, plan.spec).eval()
    # the backbone's path inside the traced part (where its FLOPs are counted)
    rel = plan.backbone[len(part):].lstrip(".") if part and plan.backbone.startswith(part) else plan.backbone
    small_part = small.get_submodule(part) if part else small
    flops: Dict[str, Optional[Tuple[float, float]]] = {
        "backbone": (_flops_of(analysed, rel, x), _flops_of(small_part, rel, x)),
        "traced_part": (float(count_flops(analysed, x)), float(count_flops(small_part, x)))}
    # The whole model is the traced part, or (detection) the traced part followed by heads that
    # run on the proposals NMS keeps: their fvcore count changes with the data, not the widths.
    flops["whole"] = flops["traced_part"] if not part else None
    return Transfer(small, plan, graph, x, flops)


__all__ = ["API_SEARCH", "SearchOutcome", "Supernet", "Transfer", "analyze", "export_files",
           "make_bins", "minmin_step", "search_widths", "transfer_widths"]
