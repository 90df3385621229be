"""From settings to objects: model info → graph + FlopsModel → bins, budgets, data and fitness.

:func:`analyze_info` is the one "model info → graph + FlopsModel" step every command uses;
:func:`build` rebuilds all the objects of a run identically from its settings (search and
export both call it, so the export sees exactly what the search saw).

Example:
    >>> a = analyze_info(create("timm:test_resnet"))                    # doctest: +SKIP
    >>> a.fm.full == a.fm.fvcore_full                                   # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, List, Optional

from ..config import BUILTIN_IMG_SIZE, DEMO_IMG_SIZE, RunSettings


@dataclass(frozen=True)
class Analysis:
    """A model's example input, channel graph and FLOPs model (``fm`` None when not asked)."""

    info: Any  # ModelInfo
    example: Any  # torch.Tensor
    graph: Any  # ChannelGraph
    fm: Any = None  # FlopsModel


def analyze_info(info: Any, flops: bool = True) -> Analysis:
    """Analyse a created model at its own input size: graph, and FLOPs model when ``flops``.

    Args:
        info: a :class:`~cafeslim.models.ModelInfo` from :func:`cafeslim.models.create`.
        flops: also build the :class:`~cafeslim.flops.FlopsModel` (checked against fvcore).

    Example:
        >>> analyze_info(create("tv:resnet18")).graph.searchable[0].channels   # doctest: +SKIP
        64
    """
    from ..flops import FlopsModel
    from ..graph import analyze

    # A model that does not trace as a whole (detection) is analysed on its traced part.
    x, model = info.example_input(), info.analysed
    graph = analyze(model, x, source=info.name, output_reason=info.output_reason)
    return Analysis(info, x, graph, FlopsModel(graph, model, x) if flops else None)


def at_size(info: Any, size: int) -> Any:
    """A :class:`~cafeslim.models.ModelInfo` whose input (and data config) is ``size`` px square.

    Example:
        >>> at_size(create("timm:test_resnet"), 64).input_size     # doctest: +SKIP
        (3, 64, 64)
    """
    shape = (info.input_size[0], int(size), int(size))
    return replace(info, input_size=shape, data_config={**info.data_config, "input_size": shape})


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


def demo_size(info: Any, size: int = DEMO_IMG_SIZE) -> Optional[int]:
    """``size`` (64 px for the demo) when the model accepts it (a fixed-size ViT does not)."""
    import torch

    if info.input_size[1] <= size:
        return None
    try:
        with torch.no_grad():
            info.model(torch.zeros(1, info.input_size[0], size, size))
    except Exception:  # noqa: BLE001 - any failure means: keep the model's own size
        return None
    return size


def build(settings: RunSettings, with_data: bool = True) -> Built:
    """Create the model, analyse it, make the bins, parse the budgets and build the data.

    Seeds first: the same settings give the same initial weights (``export`` of a ``uniform``
    run relies on it). The returned ``settings`` have the demo input size and (with data) the epochs filled in.

    Example:
        >>> build(RunSettings("timm:test_resnet", search=SearchConfig(flops="50%"))).budgets  # doctest: +SKIP
        [8299040.0]
    """
    from ..bins import channel_order, channel_space, make_bins, min_space_flops, parse_budget
    from ..data import build_data, dataset_classes
    from ..models import create
    from ..supernet.train import seed_everything

    s, t = settings, settings.train
    seed_everything(t.seed)
    info = create(s.model, pretrained=s.pretrained, weights=s.weights,
                  num_classes=len(dataset_classes(s.data, s.task)))
    builtin = BUILTIN_IMG_SIZE.get(s.data)
    size = demo_size(info, builtin) if t.img_size is None and builtin else None
    if size is not None:
        s = replace(s, train=replace(t, img_size=size))
    if s.train.img_size is not None:
        info = at_size(info, s.train.img_size)
    a = analyze_info(info)
    orders = channel_order(a.graph, info.model, s.bins.order)
    if s.search.method == "uniform":  # one-channel bins: the finest uniform multiplier
        space = channel_space(a.graph, a.fm, divisor=s.bins.divisor, order=orders)
    else:
        space = make_bins(a.graph, a.fm, beta=s.bins.beta, divisor=s.bins.divisor,
                          min_width=s.bins.min_width, order=orders, offset=s.train.offset)
    budgets = [parse_budget(b, a.fm.full, min_space_flops(space, a.fm)) for b in s.search.budgets]
    data = build_data(s.data, info, s.train, s.task) if with_data else None
    if data is not None and s.train.epochs is None:  # config.yaml records the epochs used
        s = replace(s, train=replace(s.train, epochs=s.train.epochs_for(data.steps_per_epoch)))
    return Built(s, info, a.graph, a.fm, space, budgets, data)


def make_fitness(b: Built, supernet: Any, space: Any = None, offset: Optional[int] = None) -> Any:
    """The run's :class:`~cafeslim.search.Fitness` (the same batches in search and export).

    Example:
        >>> make_fitness(build(settings), Supernet(...))(space.num_bins).top1   # doctest: +SKIP
    """
    from ..data.loaders import unsharded
    from ..search import Fitness

    s = b.settings.search
    # The batches one process recalibrates on, also under torchrun (the parallel search
    # scores each width on one rank): the result does not depend on the number of processes.
    return Fitness(supernet, space or b.space, unsharded(b.data.calib), b.data.val,
                   recal_n=s.recal_batches,
                   eval_n=s.eval_batches, offset=offset, flops_model=b.fm,
                   channels_last=b.settings.train.channels_last, task=b.settings.task)


__all__ = ["Analysis", "Built", "analyze_info", "at_size", "build", "demo_size", "make_fitness"]
