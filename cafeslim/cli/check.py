"""``cafeslim check``: will cafeslim work on my model? One verdict line per property."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Dict

import typer
from rich.text import Text

from .common import (FeaturesOnlyOpt, ImgSizeOpt, JsonOpt, ModelArg, NumClassesOpt,
                     PretrainedOpt, WeightsOpt, load_model, out, print_json)

if TYPE_CHECKING:
    from ..export.verify import CheckReport

SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random IndexSpecs and re-drawn weights.")]
SpecsOpt = Annotated[int, typer.Option(
    "--specs", min=1, metavar="N", help="Random IndexSpecs to slim and verify (prefix and non-prefix).")]
RedrawOpt = Annotated[bool, typer.Option(
    "--redraw/--no-redraw",
    help="Check on a copy whose constant or vanishing weights (zero-initialised heads, "
         "LayerScale, norm affines) are re-drawn and whose BatchNorm statistics are "
         "recalibrated, so that the output depends on every channel.")]

MARKS = {"passed": ("✓ ", "green"), "failed": ("✗ ", "red"), "not verified": ("? ", "yellow")}
VERDICTS = {"passed": ("PASS", "bold green"), "failed": ("FAIL", "bold red"),
            "not verified": ("NOT VERIFIED", "bold yellow")}


def check_command(model: ModelArg, json_out: JsonOpt = False, seed: SeedOpt = 0,
                  specs: SpecsOpt = 3, redraw: RedrawOpt = True, weights: WeightsOpt = None,
                  pretrained: PretrainedOpt = False, num_classes: NumClassesOpt = None,
                  img_size: ImgSizeOpt = None, features_only: FeaturesOnlyOpt = False) -> None:
    """Check that MODEL can be analysed, slimmed and exported correctly.

    Slims the model at N random channel selections and verifies every property: it runs
    with the original output shape, computes what the full model computes with the removed
    channels ignored (channel norms masked to the kept channels), analytic FLOPs = fvcore,
    and the .onnx and .pt2 exports match PyTorch.

    Each property is ✓ passed, ✗ failed or ? not verified. Not verified means the comparison
    could not have failed on this model with these weights, so it proves nothing: removing
    channels does not change the reference output by 100× the tolerance, the output does
    not vary with the input, the FLOPs did not change, or a channel norm could not be masked.
    Structured outputs (segmentation's dict, a features model's list) are compared leaf by
    leaf, every leaf on its own scale. A detection model is checked on its traced backbone
    (raw outputs, before the heads) and, as property final_outputs, the whole slimmed model's
    boxes/labels/scores on a fixed input against the whole model with the masked reference
    backbone (score thresholds set to 0 so that a random-weight detector returns boxes).

    Exit code 1 when any property fails, 0 otherwise (also when one is only not verified:
    read the ?-lines, or "status" in --json); a model with no searchable group fails.

    Examples:

        cafeslim check timm:test_resnet

        cafeslim check tv:mobilenet_v2 --specs 5 --seed 1

        cafeslim check mypkg.models:build_net --json

        cafeslim check tv:ssdlite320_mobilenet_v3_large --specs 1
    """
    import torch

    # Random-init weights come from the global generator: seeded, the same command gives the
    # same report (round-off-sensitive models moved by 3x between runs before).
    torch.manual_seed(seed)
    info = load_model(model, weights, pretrained, num_classes, img_size, features_only)
    from ..export.verify import check_info
    from .inspect import part_json

    report = check_info(info, n_specs=specs, seed=seed, sensitize=redraw)
    if json_out:
        print_json({**check_json(info.name, report), **part_json(info)})
    else:
        render_check(info.name, report)
        if info.part:
            out.print(Text(f"{info.kind} model: every property but final_outputs is of "
                           f"'{info.part}' (input {tuple(info.example_input().shape)}); "
                           "final_outputs compares the whole model", style="dim"))
    if report.status == "failed":
        raise typer.Exit(1)


def check_json(name: str, report: "CheckReport") -> Dict[str, Any]:
    """The ``--json`` document: the report (:meth:`CheckReport.to_json`) under the CLI's name.

    ``status`` and ``statuses`` are ``passed``/``failed``/``not verified``; ``passed`` and
    ``properties`` are the boolean views (True only for passed).

    Example:
        >>> check_json("timm:test_resnet", report)["status"]
        'passed'
    """
    doc = report.to_json()
    doc["model"] = name
    return doc


def render_check(name: str, report: "CheckReport") -> None:
    """Print ``✓``/``✗``/``?`` per property (with its detail) and the overall verdict on stdout."""
    details = getattr(report, "details", None) or {}
    for prop, status in report.statuses.items():
        mark, style = MARKS[status]
        line = Text(mark, style=style)
        line.append(prop, style="bold")
        if status == "not verified":
            line.append("  not verified", style=style)
        if details.get(prop):
            line.append(f"  {details[prop]}")
        out.print(line)
    verdict, style = VERDICTS[report.status]
    out.print(Text(f"{verdict}: {name} ({report.searchable_groups} searchable, "
                   f"{report.fixed_groups} fixed channel groups)", style=style))
