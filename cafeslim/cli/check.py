"""``cafeslim check``: will cafeslim work on my model? One verdict line per property."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Dict

import typer
from rich.text import Text

from .common import (JsonOpt, ModelArg, NumClassesOpt, PretrainedOpt, WeightsOpt, load_model,
                     out, print_json)

if TYPE_CHECKING:
    from ..export.verify import CheckReport

SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random IndexSpecs.")]
SpecsOpt = Annotated[int, typer.Option(
    "--specs", min=1, metavar="N", help="Random IndexSpecs to slim and verify (prefix and non-prefix).")]


def check_command(model: ModelArg, json_out: JsonOpt = False, seed: SeedOpt = 0,
                  specs: SpecsOpt = 3, weights: WeightsOpt = None,
                  pretrained: PretrainedOpt = False, num_classes: NumClassesOpt = None) -> None:
    """Check that MODEL can be analysed, slimmed and exported correctly.

    Slims the model at N random channel selections and verifies every property (runs with
    the original output shape, functional equivalence, analytic FLOPs = fvcore, ONNX and
    .pt2 exports match PyTorch). Exit code 0 when all pass, 1 when any fails; a model with
    no searchable group does not pass.

    Examples:

        cafeslim check timm:test_resnet

        cafeslim check tv:mobilenet_v2 --specs 5 --seed 1

        cafeslim check mypkg.models:build_net --json
    """
    info = load_model(model, weights, pretrained, num_classes)
    from ..export.verify import check_model

    report = check_model(info.model, info.example_input(), info.name, n_specs=specs, seed=seed)
    if json_out:
        print_json(check_json(info.name, report))
    else:
        render_check(info.name, report)
    if not report.passed:
        raise typer.Exit(1)


def check_json(name: str, report: "CheckReport") -> Dict[str, Any]:
    """The ``--json`` document: model, passed, properties, searchable/fixed group counts.

    Example:
        >>> check_json("timm:test_resnet", report)["passed"]
        True
    """
    return {
        "model": name,
        "passed": bool(report.passed),
        "properties": {k: bool(v) for k, v in report.properties.items()},
        "searchable_groups": int(report.searchable_groups),
        "fixed_groups": int(report.fixed_groups),
    }


def render_check(name: str, report: "CheckReport") -> None:
    """Print ``✓``/``✗`` per property (with its detail) and the overall verdict on stdout."""
    details = getattr(report, "details", None) or {}
    for prop, ok in report.properties.items():
        line = Text("✓ " if ok else "✗ ", style="green" if ok else "red")
        line.append(prop, style="bold")
        if details.get(prop):
            line.append(f"  {details[prop]}")
        out.print(line)
    verdict = "PASS" if report.passed else "FAIL"
    out.print(Text(f"{verdict}: {name} ({report.searchable_groups} searchable, "
                   f"{report.fixed_groups} fixed channel groups)",
                   style="bold green" if report.passed else "bold red"))
