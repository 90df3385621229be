"""``cafeslim export``: the sub-network a search run chose (``cafeslim export RUN``), or MODEL
slimmed uniformly (a fraction, or the uniform widths of a FLOPs budget) or to a saved
widths.json, written as ``.pt``, ``.pt2``, ``.onnx`` and ``widths.json``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, List, Optional

import typer
from rich.text import Text

from ..config import ExportConfig, default_order, ensure_empty_dir
from ..errors import ConfigError, ExportError
from ..export.formats import FORMATS
from ..pipeline.rundir import is_run_dir
from .common import (FeaturesOnlyOpt, ImgSizeOpt, JsonOpt, NumClassesOpt, PretrainedOpt, WeightsOpt,
                     before_after, choice_enum, load_model, out, print_json)

if TYPE_CHECKING:
    from ..pipeline import RunExportReport, UniformExportReport
    from ..pipeline.transfer import TransferExportReport

RunOrModelArg = Annotated[str, typer.Argument(
    metavar="RUN|MODEL", show_default=False,
    help="A `cafeslim search` run folder, or a model name as for the other commands "
         "(timm name, tv:NAME, timm:NAME, package.module:callable).")]


Order = choice_enum(ExportConfig, "order")  # the first channels, or the largest L1 norms


UniformOpt = Annotated[Optional[float], typer.Option(
    "--uniform", metavar="F", show_default=False,
    help="Keep this fraction of the channels of every searchable group (0 < F ≤ 1).")]
OrderOpt = Annotated[Optional[Order], typer.Option(
    "--order", case_sensitive=False, show_default=False,
    help="Channels kept: largest L1 norm first (default with --pretrained/--weights) or the "
         "natural order (default for random weights).")]
FormatOpt = Annotated[str, typer.Option(
    "--format", metavar="LIST", help=f"Comma-separated formats out of {','.join(FORMATS)}.")]
FlopsOpt = Annotated[Optional[str], typer.Option(
    "--flops", metavar="B", show_default=False,
    help="FLOPs budget (2G, 300M, 1.5e9, 50%, 0.5x): one uniform multiplier for every group, "
         "landing in [0.97·B, B].")]
WidthsOpt = Annotated[Optional[Path], typer.Option(
    "--widths", metavar="FILE", show_default=False,
    help="widths.json of an earlier export: recreate that architecture instead of --uniform; "
         "another model's (tv:resnet50 onto tv:fasterrcnn_resnet50_fpn): transfer its widths "
         "onto this model's backbone by module path.")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", metavar="DIR", show_default=False,
    help="Output folder (must be empty or absent); default RUN/export for a run.")]
BudgetOpt = Annotated[Optional[str], typer.Option(
    "--budget", metavar="B", show_default=False,
    help="RUN only: which of the run's budgets (as given to --flops), if it searched several.")]


Init = choice_enum(ExportConfig, "init")  # supernet weights (BN recalibrated), or fresh ones


InitOpt = Annotated[Init, typer.Option(
    "--init", case_sensitive=False,
    help="RUN only: inherit the supernet weights (BN recalibrated) or re-initialise (scratch).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")]


def export_command(model: RunOrModelArg, out_dir: OutOpt = None, uniform: UniformOpt = None,
                   flops: FlopsOpt = None, order: OrderOpt = None,
                   formats: FormatOpt = ",".join(FORMATS),
                   widths: WidthsOpt = None, budget: BudgetOpt = None, init: InitOpt = Init.inherit,
                   force: ForceOpt = False, weights: WeightsOpt = None,
                   pretrained: PretrainedOpt = False, num_classes: NumClassesOpt = None,
                   img_size: ImgSizeOpt = None, features_only: FeaturesOnlyOpt = False,
                   json_out: JsonOpt = False) -> None:
    """Export the widths a search run found (RUN), or MODEL slimmed uniformly.

    RUN (a `cafeslim search` folder): the chosen sub-network, slimmed from the supernet with
    BatchNorm recalibrated on the search's batches (or re-initialised with --init scratch), and a
    parity report on D_val: supernet sub-network vs slimmed model vs onnxruntime.

    MODEL: the paper's "Uniform" baseline: --uniform F keeps F of every group, --flops B finds
    the one fraction whose model lands in [0.97·B, B].

    MODEL --widths OTHER/widths.json (another model's export): backbone width transfer, e.g.
    a classification search's widths onto a detector's or segmentation model's backbone,
    matched by module path; refused when the backbones differ. It prints the backbone's, the
    traced part's and the whole model's FLOPs before and after.

    Both write model.pt (whole module), model.pt2 (torch.export), model.onnx (checked with
    onnxruntime) and widths.json, and print FLOPs and parameters before and after.

    Examples:

        cafeslim export runs/test_resnet-50pct

        cafeslim export runs/r50-1G_2G --budget 2G --init scratch --out exports/r50-2G

        cafeslim export tv:resnet18 --uniform 0.5 --out exports/r18

        cafeslim export resnet50 --pretrained --uniform 0.75 --order l1 --format pt,onnx --out exports/r50

        cafeslim export tv:resnet50 --flops 50% --out exports/r50-half

        cafeslim export tv:resnet18 --widths exports/r18/widths.json --out exports/r18-again

        cafeslim export tv:fasterrcnn_resnet50_fpn --widths runs/r50-2G/export/widths.json --out exports/det
    """
    fmt = parse_formats(formats)
    if is_run_dir(model):
        if uniform is not None or flops is not None or widths is not None or weights is not None \
                or pretrained or num_classes is not None or order is not None \
                or img_size is not None or features_only or json_out:
            raise ConfigError("a run folder is exported as searched: --uniform, --flops, --widths, "
                              "--weights, --pretrained, --num-classes, --order, --img-size, "
                              "--features-only and --json go with MODEL")
        from ..pipeline.run_export import export_run

        render_run_export(export_run(model, budget, init=init.value, formats=fmt, out_dir=out_dir,
                                     force=force))
        return
    if budget is not None or init is not Init.inherit:
        raise ConfigError("--budget and --init go with a run folder (cafeslim export RUN)")
    if out_dir is None:
        raise ConfigError("pass --out DIR for the exported files")
    if (uniform is not None) + (flops is not None) + (widths is not None) != 1:
        raise ConfigError("pass exactly one of --uniform F, --flops B or --widths FILE")
    if uniform is not None and not 0.0 < uniform <= 1.0:
        raise ConfigError(f"--uniform must be in (0, 1], got {uniform}")
    # Before the (slow) model creation, so a mistyped --out fails at once.
    ensure_empty_dir(out_dir, force)
    info = load_model(model, weights, pretrained, num_classes, img_size, features_only)
    from ..pipeline.uniform import uniform_export

    keep = default_order(order.value if order else None, bool(pretrained or weights))
    report = uniform_export(info, fraction=uniform, flops=flops, order=keep, formats=fmt,
                            out_dir=out_dir, widths_file=widths, force=force)
    render_model_export(info, report, json_out)
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


def render_export(name: str, report: "UniformExportReport", part: str = "") -> None:
    """Print FLOPs and params before → after, and the files written, on stdout.

    ``part``: the traced sub-module whose FLOPs were counted (a detector's ``backbone``: its
    heads run on the proposals NMS keeps, a data-dependent number), named on the FLOPs line.
    """
    out.print(Text(f"exported {name}", style="bold"))
    flops = before_after("FLOPs", report.flops_before, report.flops_after)
    out.print(flops + (f"  ({part} only)" if part else ""))
    out.print(before_after("params", report.params_before, report.params_after))
    for path in getattr(report, "files", None) or ():
        out.print(Text(f"  wrote {path}"))


def render_model_export(info: Any, report: "UniformExportReport", json_out: bool) -> None:
    """Print ``cafeslim export MODEL``'s result: JSON, a transfer, or a uniform export."""
    if json_out:
        print_json(export_json(info.name, info.kind, report, info.part))
    elif getattr(report, "plan", None) is not None:
        render_transfer(info.name, report)
    else:
        render_export(info.name, report, info.part)


def export_json(name: str, kind: str, report: "UniformExportReport", part: str = "") -> dict:
    """The ``--json`` document of ``cafeslim export MODEL`` (a transfer adds its plan).

    Example:
        >>> export_json("tv:resnet18", "classification", rep)["flops"]["after"]  # doctest: +SKIP
    """
    to_json = getattr(report, "to_json", None)
    if to_json is not None:
        return to_json(name, kind)
    return {"model": name, "kind": kind, "method": "uniform",
            "flops": {"before": report.flops_before, "after": report.flops_after,
                      "counted": part or "model"},
            "params": {"before": report.params_before, "after": report.params_after},
            "widths": {str(k): v for k, v in report.widths.items()},
            "files": [str(p) for p in report.files], "errors": report.errors}


def render_transfer(name: str, rep: "TransferExportReport") -> None:
    """Print a backbone transfer: prefixes, FLOPs per level, groups not applied, files."""
    plan = rep.plan
    sp, tp = plan.prefix
    out.print(Text(f"exported {name} with the widths of {plan.source or 'the widths file'} "
                   f"on {plan.backbone or 'the model'}", style="bold"))
    out.print(Text(f"  {plan.modules} modules matched by path (prefix {sp!r} ↔ {tp!r}); "
                   f"{len(plan.applied)} searched groups applied, {len(plan.not_applied)} not"))
    labels = {"backbone": f"backbone {plan.backbone}".rstrip(), "traced_part": "traced part",
              "whole": "whole model"}
    for key, label in labels.items():
        pair = rep.flops.get(key, ())
        if key == "traced_part" and pair == rep.flops.get("whole"):
            continue  # the whole model is the traced part
        if key in rep.flops and pair is None:
            out.print(Text(f"FLOPs   {label}: not counted (the heads run on the proposals NMS "
                           "keeps: a data-dependent count; the transfer leaves them unchanged)"))
        elif pair:
            out.print(before_after("FLOPs", *pair) + f"  {label}")
    out.print(before_after("params", rep.params_before, rep.params_after) + "  whole model")
    for g in plan.not_applied:
        out.print(Text(f"  not applied: group {g.source} ({', '.join(g.layers)}) kept {g.kept} of "
                       f"{g.channels}: {g.reason}", style="yellow"))
    for path in rep.files:
        out.print(Text(f"  wrote {path}"))


def render_run_export(rep: "RunExportReport") -> None:
    """Print what a run export wrote and its parity report on stdout; fail on a broken format.

    Example:
        >>> render_run_export(export_run("runs/x"))                             # doctest: +SKIP
    """
    from rich import box
    from rich.table import Table

    out.print(Text(f"exported {rep.run_dir} budget {rep.budget} (init {rep.init})", style="bold"))
    out.print(before_after("FLOPs", rep.flops_before, rep.flops_after))
    out.print(before_after("params", rep.params_before, rep.params_after))
    table = Table(title=f"parity on D_val ({rep.images} images; the search recorded "
                        f"{rep.score_label} {100 * rep.recorded_top1:.2f}%)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for head in ("model", rep.score_label, "max |Δ logit|", "vs"):
        table.add_column(head, justify="left" if head in ("model", "vs") else "right")
    for r in rep.parity:
        table.add_row(r.what, "–" if r.top1 is None else f"{100 * r.top1:.2f}%",
                      "–" if r.max_abs is None else f"{r.max_abs:.2e}", r.reference or "–")
    out.print(table)
    for path in rep.files:
        out.print(Text(f"  wrote {path}"))
    if rep.errors:
        raise ExportError("; ".join(f"{kind}: {why}" for kind, why in sorted(rep.errors.items())))
