"""``cafeslim inspect-bins``: the FLOPs-sensitive bins of a model (Eq. 6-9) and its search space."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Dict, List, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..bins.plot import plot_bins, space_label
from ..config import BinsConfig
from ..errors import ConfigError
from .common import (JsonOpt, ModelArg, NumClassesOpt, PretrainedOpt, WeightsOpt, choice_enum,
                     human, load_model, out, print_json)

if TYPE_CHECKING:
    from ..bins import SearchSpace
    from ..graph import ChannelGraph

_SHOWN_LAYERS = 1  # layer names per group in the table before "+N" (the others: --json)


class BinMode(str, Enum):
    """How bins are sized: FLOPs-sensitive (Eq. 9) or K equal bins per group (Table 10)."""

    flops = "flops"
    uniform = "uniform"


OrderChoice = choice_enum(BinsConfig, "order")  # natural order, or largest L1 norm first


BetaOpt = Annotated[float, typer.Option("--beta",
                                        help="β of Eq. 9: bin size of the most FLOPs-sensitive group.")]
DivisorOpt = Annotated[int, typer.Option("--divisor", min=1,
                                         help="Round bin sizes up to a multiple of this (8 suits GPUs).")]
OffsetOpt = Annotated[int, typer.Option("--offset", min=0, help="r of Eq. 5 (locally free zone).")]
StagesOpt = Annotated[int, typer.Option("--stages", min=1, help="Stages of multi-stage search (Eq. 14).")]
AlphaOpt = Annotated[float, typer.Option("--alpha",
                                         help="Bin evolving speed α: β is divided by α each stage.")]
BinsOpt = Annotated[BinMode, typer.Option("--bins", case_sensitive=False,
                                          help="flops (Eq. 9) or uniform (--num-bins equal bins).")]
NumBinsOpt = Annotated[Optional[int], typer.Option(
    "--num-bins", min=1, show_default=False, metavar="K",
    help="Bins per group for --bins uniform (default: the FLOPs-sensitive space's mean).")]
MinWidthOpt = Annotated[Optional[float], typer.Option(
    "--min-width", show_default=False, metavar="W",
    help="Smallest width per group: channels (≥ 1) or a fraction (< 1); at least one bin.")]
OrderOpt = Annotated[OrderChoice, typer.Option("--order", case_sensitive=False,
                                               help="Channel order: natural, or largest L1 first.")]
PlotOpt = Annotated[Optional[Path], typer.Option(
    "--plot", metavar="PNG", show_default=False,
    help="Write bin size and number of bins per layer (like the paper's Fig. 5).")]


def inspect_bins_command(model: ModelArg, beta: BetaOpt = 1.0, divisor: DivisorOpt = 1,
                         offset: OffsetOpt = 1, stages: StagesOpt = 1, alpha: AlphaOpt = 2.0,
                         bins: BinsOpt = BinMode.flops, num_bins: NumBinsOpt = None,
                         min_width: MinWidthOpt = None, order: OrderOpt = OrderChoice.natural,
                         plot: PlotOpt = None, json_out: JsonOpt = False,
                         weights: WeightsOpt = None, pretrained: PretrainedOpt = False,
                         num_classes: NumClassesOpt = None) -> None:
    """Show MODEL's search space: FLOPs-sensitive bins per searchable group (Eq. 6-9).

    Every channel group gets bins of about equal FLOPs: ε is the FLOPs of one of its channels,
    the bin size is round(β · max ε / ε). The search unit of a group is its number of bins.

    Examples:

        cafeslim inspect-bins tv:resnet50

        cafeslim inspect-bins tv:mobilenet_v2 --beta 0.5 --divisor 8 --plot bins.png

        cafeslim inspect-bins tv:mobilenet_v2 --beta 4 --stages 3 --alpha 2

        cafeslim inspect-bins tv:resnet50 --bins uniform --num-bins 10 --json
    """
    if num_bins is not None and bins is not BinMode.uniform:
        raise ConfigError("--num-bins goes with --bins uniform")
    for flag, value in (("--beta", beta), ("--alpha", alpha), ("--min-width", min_width)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be positive, got {value}")
    info = load_model(model, weights, pretrained, num_classes)
    from ..bins import channel_order, make_bins
    from ..pipeline import analyze_info

    a = analyze_info(info)
    graph, fm = a.graph, a.fm
    orders = channel_order(graph, info.model, order.value)
    common = dict(divisor=divisor, min_width=min_width, order=orders, offset=offset)
    flops_space = make_bins(graph, fm, beta=beta, **common)
    if num_bins is None:
        num_bins = max(1, int(round(float(flops_space.num_bins.mean())))) if flops_space.groups else 1
    uniform_space = make_bins(graph, fm, mode="uniform", num_bins=num_bins, **common)
    space = flops_space if bins is BinMode.flops else uniform_space
    if plot is not None:
        plot_bins(space, plot, title=f"{info.name}: " + space_label(space))
    if json_out:
        from ..bins import bins_json, stage_log10_sizes

        doc = bins_json(space, info.name)
        if stages > 1 and bins is BinMode.flops:   # Eq. 14 over the stages, as in the table
            doc["log10_space"] = stage_log10_sizes(graph, fm, beta, stages, alpha, **common)[0]
        print_json(doc)
        return
    render_bins(info.name, graph, fm, space, flops_space, uniform_space, stages, alpha, common)
    if plot is not None:
        out.print(Text(f"wrote {plot}"))


def _layers(graph: "ChannelGraph", gid: int, room: int = 10_000) -> str:
    layers: List[str] = graph.groups[gid].layers
    more = f" +{len(layers) - _SHOWN_LAYERS}" if len(layers) > _SHOWN_LAYERS else ""
    text = ", ".join(layers[:_SHOWN_LAYERS])
    keep = room - len(more)
    if len(text) > keep > 8:
        # Cut the middle: the start says where in the network, the end which layer of the block.
        head = (keep - 1) // 2
        text = text[:head] + "…" + text[len(text) - (keep - 1 - head):]
    return text + more


def render_bins(name: str, graph: "ChannelGraph", fm, space: "SearchSpace",
                flops_space: "SearchSpace", uniform_space: "SearchSpace", stages: int,
                alpha: float, common: Dict) -> None:
    """Print the per-group table and the search-space summary on stdout."""
    from ..bins import (aligned_candidates, bin_spread, choices_range, flops_per_bin,
                        human_flops, min_space_flops, n_choices, stage_log10_sizes)

    r = space.offset
    fpb = flops_per_bin(space)
    heads = ("group", "layers", "channels", "ε", "bin size", "bins", "min", "FLOPs/bin", "choices")
    rows = []
    for gb, f in zip(space.groups, fpb):
        ch = str(gb.channels * gb.blocks) + (f" ({gb.blocks}×{gb.channels})" if gb.blocks > 1 else "")
        lo, hi = choices_range(gb, r)
        rows.append((str(gb.gid), _layers(graph, gb.gid), ch, human(gb.sensitivity),
                     str(gb.bin_size * gb.blocks), str(gb.num_bins), str(gb.min_bins), human(f),
                     str(lo) if lo == hi else f"{lo}–{hi}"))
    table = Table(title=f"{name}: {space_label(space)}, offset r={r}, "
                        f"{len(space.groups)} searchable groups", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    wide = [max([len(head)] + [len(row[c]) for row in rows]) for c, head in enumerate(heads)]
    # Only the layer names may be cut short: numbers keep their width on an 80-column terminal.
    room = max(12, out.width - sum(w + 1 for h, w in zip(heads, wide) if h != "layers") - 2)
    rows = [(r0, _layers(graph, int(r0), room), *rest) for r0, _, *rest in rows]
    for head, w in zip(heads, wide):
        if head == "layers":
            table.add_column(head, no_wrap=True, overflow="ellipsis", max_width=min(w, room))
        else:
            table.add_column(head, justify="right", no_wrap=True, min_width=w)
    for row in rows:
        table.add_row(*[Text(v) for v in row])
    out.print(table)
    out.print("ε: FLOPs of one channel at full width; bin size in channels (all blocks); min: "
              "fewest bins kept; choices: locally free kept-bin sets per width (Eq. 5)")
    out.print(f"FLOPs {human_flops(fm.full)} full, {human_flops(min_space_flops(space, fm))} "
              f"at the smallest width of this space (one multiply-add = one FLOP)")
    if stages > 1 and space.meta.get("mode") == "flops":
        total, per = stage_log10_sizes(graph, fm, space.beta, stages, alpha, **common)
        betas = " → ".join(f"{space.beta / alpha ** j:g}" for j in range(stages))
        parts = " + ".join(f"10^{p:.1f}" for p in per)
        out.print(f"search space: 10^{total:.1f} width vectors over {stages} stages "
                  f"(Eq. 14, β {betas}: {parts}; full channels at every stage, an upper bound)")
    else:
        out.print(f"search space: 10^{space.log10_size:.1f} width vectors "
                  f"(product of bins per group, Eq. 14 with one stage)")
    sf, su = bin_spread(flops_space), bin_spread(uniform_space)
    out.print(f"FLOPs per bin, max/min over groups with more than one bin: {sf:.2f}× with "
              f"FLOPs-sensitive bins (β={flops_space.beta:g}) vs {su:.2f}× with uniform bins "
              f"(K={uniform_space.meta.get('num_bins')})")
    mid = [max(gb.min_bins, (gb.num_bins + 1) // 2) for gb in space.groups]
    mixed = sum(math.log10(n_choices(k, gb.num_bins, r)) for k, gb in zip(mid, space.groups))
    out.print(f"candidates per width (r={r}): {aligned_candidates(space, mid)} aligned (at most "
              f"C({2 * r + 1},{r + 1}) = {math.comb(2 * r + 1, r + 1)}, fewer at the edges); "
              f"10^{mixed:.1f} when every group picks its choice freely (at half width)")
