"""``cafeslim inspect``: the channel groups of a model, as a table or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

from rich.table import Table
from rich.text import Text

from .common import (FeaturesOnlyOpt, ImgSizeOpt, JsonOpt, ModelArg, NumClassesOpt,
                     PretrainedOpt, WeightsOpt, human, load_model, out, print_json)

if TYPE_CHECKING:
    from ..graph.channel_graph import ChannelGraph, Group
    from ..models import ModelInfo

_SHOWN_LAYERS = 3  # layer names listed per group in the table before "+N more"


def inspect_command(model: ModelArg, json_out: JsonOpt = False, weights: WeightsOpt = None,
                    pretrained: PretrainedOpt = False, num_classes: NumClassesOpt = None,
                    img_size: ImgSizeOpt = None, features_only: FeaturesOnlyOpt = False) -> None:
    """Show MODEL's channel groups: which widths can be searched, which are fixed and why.

    A group is a set of channels that must be kept or removed together (a conv's outputs,
    the BNs that normalise them, every layer that reads them, residual branches added to them).

    Examples:

        cafeslim inspect resnet50

        cafeslim inspect tv:mobilenet_v2 --json > groups.json

        cafeslim inspect mypkg.models:build_net --weights net.safetensors

        cafeslim inspect tv:fasterrcnn_mobilenet_v3_large_320_fpn   (traces the backbone)

        cafeslim inspect timm:resnet50 --features-only
    """
    info = load_model(model, weights, pretrained, num_classes, img_size, features_only)
    from ..flops import count_flops, count_params
    from ..pipeline import analyze_info

    a = analyze_info(info, flops=False)
    example, graph = a.example, a.graph
    # FLOPs of what is traced (a detection model's backbone); params of the whole model
    flops, params = count_flops(info.analysed, example), count_params(info.model)
    if json_out:
        print_json(inspect_json(info.name, graph, flops, params, info))
    else:
        render_inspect(info.name, graph, flops, params, info)


def part_json(info: "ModelInfo") -> Dict[str, Any]:
    """Kind, traced part and the reason for its boundary, as ``inspect``/``check`` report them.

    Example:
        >>> part_json(create("tv:r3d_18"))["kind"]                # doctest: +SKIP
        'video'
    """
    return {"kind": info.kind, "traced": info.part or "(whole model)",
            "boundary": info.part_reason or None}


def inspect_json(name: str, graph: "ChannelGraph", flops: int, params: int,
                 info: "ModelInfo" = None) -> Dict[str, Any]:
    """The ``--json`` document: model, flops (of the traced part), params and one entry per group.

    Example:
        >>> inspect_json("tv:resnet18", graph, 1_814_073_344, 11_689_512)["groups"][0]["members"][:2]
        ['conv1.weight', 'bn1.weight']
    """
    return {
        "model": name,
        **({**part_json(info), "input": list(graph.input_shape)} if info is not None else {}),
        "flops": int(flops),
        "params": int(params),
        "groups": [
            {"id": g.id, "channels": g.channels, "searchable": g.searchable,
             "reason": "; ".join(g.reasons), "members": [m.qualname for m in g.members]}
            for g in graph.groups
        ],
    }


def render_inspect(name: str, graph: "ChannelGraph", flops: int, params: int,
                   info: "ModelInfo" = None) -> None:
    """Print the group table and the totals on stdout."""
    table = Table(title=f"{name}: {len(graph.searchable)} searchable, {len(graph.fixed)} fixed "
                        f"channel groups", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("channels", justify="right")
    table.add_column("searchable")
    table.add_column("members")
    table.add_column("reason")
    for g in graph.groups:
        table.add_row(str(g.id), str(g.channels),
                      "[green]yes[/]" if g.searchable else "[red]no[/]",
                      # Text(): reasons quote code like `x[:, :3]`, which rich would read as markup
                      Text(_members_summary(g)), Text("; ".join(g.reasons)))
    out.print(table)
    traced = f" of {info.part}" if info is not None and info.part else ""
    out.print(f"FLOPs{traced} {human(flops)} (one multiply-add = one FLOP), params {human(params)}, "
              f"input{traced} {tuple(graph.input_shape)}")
    if info is not None and info.part:
        out.print(Text(f"{info.kind} model: only '{info.part}' is traced; the rest is a fixed "
                       f"boundary ({info.part_reason})"))


def _members_summary(group: "Group") -> str:
    layers: List[str] = group.layers
    shown = ", ".join(layers[:_SHOWN_LAYERS])
    more = f" +{len(layers) - _SHOWN_LAYERS} more" if len(layers) > _SHOWN_LAYERS else ""
    n = len(group.members)
    return f"{shown}{more} ({n} tensor{'' if n == 1 else 's'})"
