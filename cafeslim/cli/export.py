"""``cafeslim export``: slim every searchable group uniformly (a fraction, or the uniform widths
of a FLOPs budget) or to a saved widths.json, and export."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, List, Optional

import typer
from rich.text import Text

from ..errors import ConfigError
from .common import (ModelArg, NumClassesOpt, PretrainedOpt, WeightsOpt, before_after,
                     ensure_empty_dir, load_model, out)

if TYPE_CHECKING:
    from ..export import ExportReport

FORMATS = ("pt", "pt2", "onnx")


class Order(str, Enum):
    """Which channels a uniform width keeps: the first ones, or the largest L1 norms."""

    natural = "natural"
    l1 = "l1"


UniformOpt = Annotated[Optional[float], typer.Option(
    "--uniform", metavar="F", show_default=False,
    help="Keep this fraction of the channels of every searchable group (0 < F ≤ 1).")]
OrderOpt = Annotated[Order, typer.Option(
    "--order", case_sensitive=False, help="Channels kept: natural order, or largest L1 norm first.")]
FormatOpt = Annotated[str, typer.Option(
    "--format", metavar="LIST", help=f"Comma-separated formats out of {','.join(FORMATS)}.")]
FlopsOpt = Annotated[Optional[str], typer.Option(
    "--flops", metavar="B", show_default=False,
    help="FLOPs budget (2G, 300M, 1.5e9, 50%, 0.5x): one uniform multiplier for every group, "
         "landing in [0.97·B, B].")]
WidthsOpt = Annotated[Optional[Path], typer.Option(
    "--widths", metavar="FILE", show_default=False,
    help="widths.json of an earlier export: recreate that architecture instead of --uniform.")]
OutOpt = Annotated[Path, typer.Option("--out", metavar="DIR", show_default=False,
                                      help="Output folder (must be empty or absent).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")]


def export_command(model: ModelArg, out_dir: OutOpt, uniform: UniformOpt = None,
                   flops: FlopsOpt = None, order: OrderOpt = Order.natural,
                   formats: FormatOpt = ",".join(FORMATS),
                   widths: WidthsOpt = None, force: ForceOpt = False, weights: WeightsOpt = None,
                   pretrained: PretrainedOpt = False, num_classes: NumClassesOpt = None) -> None:
    """Slim MODEL to the same fraction of channels in every searchable group and export it.

    This is the paper's "Uniform" baseline: --uniform F keeps F of every group, --flops B finds
    the one fraction whose model lands in [0.97·B, B]. Writes model.pt (whole module), model.pt2
    (torch.export), model.onnx (checked with onnxruntime) and widths.json, and prints FLOPs and
    parameters before and after.

    Examples:

        cafeslim export tv:resnet18 --uniform 0.5 --out exports/r18

        cafeslim export resnet50 --pretrained --uniform 0.75 --order l1 --format pt,onnx --out exports/r50

        cafeslim export tv:resnet50 --flops 50% --out exports/r50-half

        cafeslim export tv:resnet18 --widths exports/r18/widths.json --out exports/r18-again
    """
    fmt = parse_formats(formats)
    if (uniform is not None) + (flops is not None) + (widths is not None) != 1:
        raise ConfigError("pass exactly one of --uniform F, --flops B or --widths FILE")
    if uniform is not None and not 0.0 < uniform <= 1.0:
        raise ConfigError(f"--uniform must be in (0, 1], got {uniform}")
    # Before the (slow) model creation, so a mistyped --out fails at once.
    ensure_empty_dir(out_dir, force)
    info = load_model(model, weights, pretrained, num_classes)
    # TODO(lead): re-export uniform_export from cafeslim.export and import it from there.
    from ..export.formats import ExportError
    from ..export.pipeline import uniform_export

    report = uniform_export(info, fraction=uniform, flops=flops, order=order.value, formats=fmt,
                            out_dir=out_dir, widths_file=widths, force=force)
    render_export(info.name, report)
    errors = getattr(report, "errors", None)
    if errors:
        # The other files are written (and listed above); fail so scripts notice the missing one.
        raise ExportError("; ".join(f"{kind}: {why}" for kind, why in sorted(errors.items())))


def parse_formats(text: str) -> List[str]:
    """Split and validate ``--format``.

    Example:
        >>> parse_formats("pt, onnx")
        ['pt', 'onnx']
    """
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in FORMATS]
    if unknown or not items:
        raise ConfigError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; "
                          f"got {text!r}")
    return list(dict.fromkeys(items))


def render_export(name: str, report: "ExportReport") -> None:
    """Print FLOPs and params before → after, and the files written, on stdout."""
    out.print(Text(f"exported {name}", style="bold"))
    out.print(before_after("FLOPs", report.flops_before, report.flops_after))
    out.print(before_after("params", report.params_before, report.params_after))
    for path in getattr(report, "files", None) or ():
        out.print(Text(f"  wrote {path}"))
