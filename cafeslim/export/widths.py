"""``widths.json``: the exported architecture — per-layer channels, FLOPs, params, the IndexSpec.

It is what ``cafeslim train`` and ``cafeslim eval`` read back to rebuild a slimmed model from
the original, so reading validates the spec against the model's channel graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from torch import nn

from ..errors import SpecError
from ..graph.channel_graph import ChannelGraph, spec_from_json, spec_to_json
from ..ops import module_handler

PathLike = Union[str, os.PathLike]
WIDTHS_FORMAT = "cafeslim.widths/1"


def _layer_rows(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """Channels and parameters of every module an op handler describes (convs, linears, norms)."""
    rows: Dict[str, Dict[str, Any]] = {}
    for name, mod in model.named_modules():
        handler = module_handler(mod)
        row = handler.describe(mod) if handler is not None else None
        if row is None:
            continue
        rows[name] = {"type": type(mod).__name__, **row,
                      "params": sum(p.numel() for p in mod.parameters(recurse=False))}
    return rows


def widths_info(graph: ChannelGraph, spec: Mapping[int, Sequence[int]], *, source: str = "",
                slim_model: Optional[nn.Module] = None, original: Optional[nn.Module] = None,
                flops: Optional[float] = None, full_flops: Optional[float] = None,
                layer_flops: Optional[Mapping[str, float]] = None,
                extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The content of ``widths.json`` for a spec (pass it to :func:`write_widths_json`).

    Args:
        graph: the full model's channel graph.
        spec: the exported IndexSpec.
        source: the model name (``resnet50``, ``tv:mobilenet_v2``, ...).
        slim_model: the slimmed model, for per-layer channels and parameter counts.
        original: the full model, for the per-layer channels before slimming.
        flops, full_flops: FLOPs of the slimmed and full model (one multiply-add = one FLOP).
        layer_flops: optional FLOPs per module name of the slimmed model.
        extra: anything else to record (budget, run name, ...).

    Example:
        >>> info = widths_info(graph, spec, source="resnet50", slim_model=small, flops=2.0e9)
    """
    spec = graph.validate_spec(spec)
    widths = graph.widths_of(spec)
    info: Dict[str, Any] = {
        "format": WIDTHS_FORMAT,
        "source": source or graph.source,
        "input_shape": list(graph.input_shape),
        "flops": {"slim": flops, "full": full_flops},
        "params": {"slim": None, "full": None},
        "widths": {str(g): w for g, w in sorted(widths.items())},
        "groups": [{"id": g.id, "channels": g.channels, "kept": widths.get(g.id, g.channels),
                    "searchable": g.searchable, "reason": "; ".join(g.reasons), "layers": g.layers}
                   for g in graph.groups],
        "layers": {},
        "index_spec": spec_to_json(spec),
        "graph": {"tracer": graph.tracer, "groups": len(graph.groups),
                  "searchable": len(graph.searchable), "fixed": len(graph.fixed)},
    }
    if slim_model is not None:
        info["params"]["slim"] = sum(p.numel() for p in slim_model.parameters())
        info["layers"] = _layer_rows(slim_model)
    if original is not None:
        info["params"]["full"] = sum(p.numel() for p in original.parameters())
        for name, row in _layer_rows(original).items():
            if name in info["layers"]:
                info["layers"][name]["full"] = {k: v for k, v in row.items() if k in ("in", "out", "channels")}
    for name, value in (layer_flops or {}).items():
        info["layers"].setdefault(name, {})["flops"] = value
    if extra:
        info.update(extra)
    return info


def write_widths_json(path: PathLike, info: Mapping[str, Any]) -> Path:
    """Write ``widths.json`` (see :func:`widths_info`); the IndexSpec is required.

    Example:
        >>> write_widths_json("out/widths.json", widths_info(graph, spec, source="resnet50"))
    """
    if "index_spec" not in info:
        raise SpecError("widths info has no 'index_spec'")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def read_widths_json(path: PathLike, graph: Optional[ChannelGraph] = None) -> Dict[str, Any]:
    """Read ``widths.json``; ``info["index_spec"]`` comes back as an IndexSpec (int keys).

    Args:
        path: the file.
        graph: when given, the spec is validated against it (recreating an architecture on a
            model whose groups differ is an error, not a silent mismatch).

    Raises:
        SpecError: unreadable or malformed file, or a spec that does not fit ``graph``.

    Example:
        >>> spec = read_widths_json("out/widths.json", graph)["index_spec"]
    """
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot read widths file {path}: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("index_spec"), dict):
        raise SpecError(f"{path} is not a cafeslim widths file (no 'index_spec' object)")
    spec = spec_from_json(info["index_spec"])
    if graph is not None:
        try:
            spec = graph.validate_spec(spec)
        except SpecError as exc:
            raise SpecError(f"{path} does not fit this model: {exc}") from None
        groups = info.get("groups")
        if isinstance(groups, list):
            for row in groups:
                gid = row.get("id") if isinstance(row, dict) else None
                if isinstance(gid, int) and 0 <= gid < len(graph.groups) and \
                        row.get("channels") != graph.groups[gid].channels:
                    raise SpecError(f"{path}: group {gid} had {row.get('channels')} channels, "
                                    f"this model's has {graph.groups[gid].channels}")
    info["index_spec"] = spec
    return info
