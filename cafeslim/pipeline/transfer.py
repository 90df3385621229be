"""``cafeslim export MODEL --widths FILE`` where FILE is another model's export: backbone transfer.

A classification search's ``widths.json`` (``tv:resnet50``) given to a detection or
segmentation model (``tv:fasterrcnn_resnet50_fpn``) slims that model's backbone to the same
widths, by module path (:mod:`cafeslim.export.transfer`), and writes the whole model as any
export does: ``model.pt`` always; ``.pt2``/``.onnx`` of the whole model where the exporters
handle its kind (segmentation, timm features) and of the traced part for detection
(:data:`~cafeslim.export.whole.WHOLE_EXPORT_GAPS`). ``widths.json`` records the transfer
(prefixes, every searched group applied or not and why) and the FLOPs before and after of the
backbone, the traced part and the whole model.

Example:
    >>> rep = transfer_export(create("tv:fasterrcnn_resnet50_fpn"), "r50/widths.json", out_dir="det")  # doctest: +SKIP
    >>> rep.flops["backbone"]                                                       # doctest: +SKIP
    (4.1e9, 2.0e9)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Dict, Optional, Tuple, Union

from ..config import ensure_empty_dir
from ..export.formats import FORMATS, export_model
from ..export.widths import widths_info
from ..export.whole import export_whole
from .uniform import UniformExportReport

if TYPE_CHECKING:
    from ..models import ModelInfo

PathLike = Union[str, Path]


@dataclass
class TransferExportReport(UniformExportReport):
    """:class:`UniformExportReport` of the traced part, plus the transfer.

    Attributes:
        plan: the :class:`~cafeslim.export.transfer.TransferPlan`.
        flops: ``backbone``, ``traced_part``, ``whole`` -> (before, after) by fvcore
            (``whole`` None where fvcore cannot follow the whole model).
    """

    plan: Any = None
    flops: Dict[str, Optional[Tuple[float, float]]] = field(default_factory=dict)

    def to_json(self, name: str, kind: str) -> Dict[str, Any]:
        """The ``--json`` document of ``cafeslim export MODEL --widths OTHER/widths.json``."""
        pair = lambda v: None if v is None else {"before": v[0], "after": v[1]}  # noqa: E731
        return {"model": name, "kind": kind, "method": "transfer",
                "flops": {k: pair(v) for k, v in self.flops.items()},
                "params": {"before": self.params_before, "after": self.params_after},
                "transfer": self.plan.to_json(), "files": [str(p) for p in self.files],
                "errors": self.errors}


def transfer_export(info: "ModelInfo", widths_file: PathLike, *, formats: Collection[str] = FORMATS,
                    out_dir: PathLike, force: bool = False) -> TransferExportReport:
    """Slim ``info.model``'s backbone to another model's exported widths, and export it.

    Args:
        info: the target, from :func:`cafeslim.models.create` (detection, segmentation, a
            timm ``features_only`` model, or any model sharing module paths with the file).
        widths_file: the other model's ``widths.json``.
        formats: subset of ``pt``, ``pt2``, ``onnx``.
        out_dir: output folder (must be empty or absent unless ``force``).
        force: write into a non-empty folder.

    Raises:
        TransferError: the backbones do not match (one line saying where).
        OutputExistsError: ``out_dir`` is not empty and ``force`` is False.

    Example:
        >>> rep = transfer_export(create("tv:deeplabv3_resnet50", img_size=128), "r50/widths.json",
        ...                       out_dir="seg")                                 # doctest: +SKIP
        >>> [g.status for g in rep.plan.groups][:2]                              # doctest: +SKIP
        ['applied', 'applied']
    """
    from ..api import transfer_widths
    from ..flops import count_params

    out = Path(out_dir)
    ensure_empty_dir(out, force)
    t = transfer_widths(info, widths_file)
    graph, spec, small, x = t.graph, t.plan.spec, t.model, t.example_input
    small_part = small.get_submodule(info.part) if info.part else small
    before, after = t.flops["traced_part"]
    extra: Dict[str, Any] = {"method": "transfer", "widths_file": str(widths_file),
                             "transfer": t.plan.to_json(),
                             "flops_transfer": {k: (None if v is None else list(v))
                                                for k, v in t.flops.items()}}
    if info.part:
        extra.update(traced_part=info.part, flops_of=info.part)
    meta = widths_info(graph, spec, source=info.name, slim_model=small_part, original=info.analysed,
                       flops=after, full_flops=before, extra=extra)
    if info.part:
        res = export_whole(small, info.part, x, info.model_inputs(), out, set(formats), meta)
    else:
        res = export_model(small, x, out, set(formats), meta)
    return TransferExportReport(
        flops_before=before, flops_after=after, params_before=count_params(info.model),
        params_after=count_params(small),
        files=[res.paths[f] for f in ("widths", *FORMATS) if f in res.paths],
        widths=graph.widths_of(spec), errors=dict(res.errors), result=res,
        plan=t.plan, flops=dict(t.flops))


def is_transfer(info: "ModelInfo", widths_file: PathLike) -> bool:
    """Whether ``widths_file`` comes from another model than ``info`` (then it is transferred).

    Example:
        >>> is_transfer(create("tv:fasterrcnn_resnet50_fpn"), "r50/widths.json")  # doctest: +SKIP
        True
    """
    from ..export.transfer import read_widths

    return str(read_widths(widths_file).get("source", "")) != info.name


__all__ = ["TransferExportReport", "is_transfer", "transfer_export"]
