"""``cafeslim export MODEL``: choose uniform widths (or reload saved ones), slim, write files.

Three ways to pick the architecture, exactly one per call:

- ``fraction=F``: every searchable group keeps ``round(F · block_size)`` channels per block
  (at least one), the same fraction everywhere.
- ``flops=B`` (``2G``, ``300M``, ``50%``, ``0.5x``): the paper's "Uniform" baseline for a budget,
  :func:`~cafeslim.bins.budget.uniform_widths` over one-channel bins, landing in
  ``[0.97 B, B]`` per the FLOPs model.
- ``widths_file``: the IndexSpec of an earlier export's ``widths.json``, recreated exactly;
  a file exported from another model is transferred onto this model's backbone by module
  path instead (:func:`cafeslim.pipeline.transfer.transfer_export`).

With ``order="l1"`` the kept channels are the most important ones by
:func:`~cafeslim.bins.order.channel_order` (pretrained models); ``natural`` keeps the first ones.
FLOPs after slimming are fvcore's count of the slimmed model (the ground truth), not the model's
prediction; both are recorded in ``widths.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import ConfigError
from ..export.formats import FORMATS, ExportResult, export_model
from ..export.widths import read_widths_json, widths_info
from ..export.whole import export_whole, slim_whole
from .objects import analyze_info
from ..config import ensure_empty_dir

if TYPE_CHECKING:
    from ..models import ModelInfo

PathLike = Union[str, Path]


@dataclass
class UniformExportReport:
    """What :func:`uniform_export` did.

    Attributes:
        flops_before, flops_after: fvcore FLOPs of the full and slimmed model.
        params_before, params_after: parameter counts.
        files: the written files (``widths.json`` first, then the model files).
        widths: searchable group id -> kept channels.
        flops_predicted: the FLOPs model's value for the kept widths (equals ``flops_after``
            when the FLOPs model is exact for this model).
        budget: the parsed budget in FLOPs (``flops=`` only).
        errors: format -> why that file failed (the others are still written).
        result: the full :class:`~cafeslim.export.formats.ExportResult` (parity per format).
    """

    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    files: List[Path] = field(default_factory=list)
    widths: Dict[int, int] = field(default_factory=dict)
    flops_predicted: float = 0.0
    budget: Optional[float] = None
    errors: Dict[str, str] = field(default_factory=dict)
    result: Optional[ExportResult] = None


def uniform_export(info: "ModelInfo", *, fraction: Optional[float] = None,
                   flops: Union[str, float, None] = None, order: str = "natural",
                   formats: Collection[str] = FORMATS, out_dir: PathLike,
                   widths_file: Optional[PathLike] = None, force: bool = False,
                   low: float = 0.97) -> UniformExportReport:
    """Slim ``info.model`` uniformly (or to a saved widths.json) and export it.

    Args:
        info: the model, from :func:`cafeslim.models.create`.
        fraction: keep this fraction of every searchable group (0 < F ≤ 1).
        flops: a FLOPs budget (``2G``, ``300M``, ``1.5e9``, ``50%``, ``0.5x``, or a number).
        order: ``natural`` or ``l1`` (which channels a width keeps).
        formats: subset of ``pt``, ``pt2``, ``onnx``.
        out_dir: output folder (must be empty or absent unless ``force``).
        widths_file: an earlier export's ``widths.json`` to recreate (another model's:
            transferred onto this one's backbone, returning a ``TransferExportReport``).
        force: write into a non-empty folder.
        low: lower end of the budget window, as a fraction of the budget.

    Returns:
        An :class:`UniformExportReport`.

    Raises:
        ConfigError: not exactly one of fraction / flops / widths_file, or a bad value.
        BudgetError: a malformed or unreachable budget.
        SpecError: a widths file that does not fit the model.
        OutputExistsError: ``out_dir`` is not empty and ``force`` is False.

    Example:
        >>> rep = uniform_export(create("tv:resnet18"), flops="50%", out_dir="exports/r18")  # doctest: +SKIP
        >>> rep.flops_after / rep.flops_before                                             # doctest: +SKIP
        0.49...
    """
    from ..flops import count_flops, count_params

    given = [fraction is not None, flops is not None, widths_file is not None]
    if sum(given) != 1:
        raise ConfigError("pass exactly one of a fraction (--uniform F), a budget (--flops B) "
                          "or a widths file (--widths FILE)")
    if fraction is not None and not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"the uniform fraction must be in (0, 1], got {fraction}")
    out = Path(out_dir)
    ensure_empty_dir(out, force)
    if widths_file is not None:
        from .transfer import is_transfer, transfer_export

        if is_transfer(info, widths_file):
            return transfer_export(info, widths_file, formats=formats, out_dir=out, force=True)

    a = analyze_info(info)
    x, graph, fm = a.example, a.graph, a.fm
    spec, extra, budget = _uniform_spec(info, graph, fm, fraction, flops, widths_file, order, low)

    # A model traced in part (detection): the part is slimmed inside the whole model, FLOPs
    # are the traced part's, and the whole model is what model.pt holds.
    small = slim_whole(info.model, info.part, graph, spec)
    part, small_part = info.analysed, (small.get_submodule(info.part) if info.part else small)
    flops_before = float(fm.fvcore_full if fm.fvcore_full is not None else count_flops(part, x))
    flops_after = float(count_flops(small_part, x))
    predicted = fm.flops(graph.widths_of(spec))
    extra["flops_predicted"] = predicted
    if info.part:
        extra.update(traced_part=info.part, flops_of=info.part)
    meta = widths_info(graph, spec, source=info.name, slim_model=small_part, original=part,
                       flops=flops_after, full_flops=flops_before, extra=extra)
    if info.part:
        res = export_whole(small, info.part, x, info.model_inputs(), out, set(formats), meta)
    else:
        res = export_model(small, x, out, set(formats), meta)
    files = [res.paths[f] for f in ("widths", *FORMATS) if f in res.paths]
    return UniformExportReport(
        flops_before=flops_before, flops_after=flops_after,
        params_before=count_params(info.model), params_after=count_params(small), files=files,
        widths=graph.widths_of(spec), flops_predicted=predicted, budget=budget,
        errors=dict(res.errors), result=res)


def _uniform_spec(info: "ModelInfo", graph: Any, fm: Any, fraction: Optional[float],
                  flops: Union[str, float, None], widths_file: Optional[PathLike], order: str,
                  low: float) -> Tuple[Any, Dict[str, Any], Optional[float]]:
    """``(IndexSpec, widths.json extras, budget)`` of a fraction, a budget or a widths file."""
    from ..bins import channel_order, channel_space, min_space_flops, parse_budget, uniform_widths

    extra: Dict[str, Any] = {"method": "uniform", "order": order}
    if widths_file is not None:
        extra.update(method="widths", widths_file=str(widths_file))
        return read_widths_json(widths_file, graph)["index_spec"], extra, None
    space = channel_space(graph, fm, order=channel_order(graph, info.analysed, order))
    budget = None
    if fraction is not None:
        k = np.array([max(1, int(np.floor(float(fraction) * g.channels + 0.5)))
                      for g in space.groups], dtype=np.int64)
        extra["fraction"] = float(fraction)
    else:
        budget = parse_budget(flops, fm.full, min_space_flops(space, fm))
        k = uniform_widths(space, fm, budget, low=low)
        extra.update(budget=budget, budget_text=str(flops), window=[low * budget, budget])
    return space.fixed_spec(k), extra, budget
