"""Pieces shared by the sub-commands: model options, output folders, number formatting.

Nothing here imports torch at module level: ``cafeslim --help`` must stay fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from ..errors import OutputExistsError

if TYPE_CHECKING:
    from ..models import ModelInfo

ModelArg = Annotated[str, typer.Argument(
    metavar="MODEL", show_default=False,
    help="timm name (resnet50, resnet50.a1_in1k), tv:NAME (torchvision), timm:NAME, "
         "or package.module:callable for your own model.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", metavar="FILE", show_default=False,
    help="State dict to load (.safetensors preferred; .pt/.pth/.bin are read with "
         "weights_only=True), optionally under a model/state_dict key.")]
PretrainedOpt = Annotated[bool, typer.Option(
    "--pretrained", help="Load timm/torchvision hub weights (needs network unless cached).")]
NumClassesOpt = Annotated[Optional[int], typer.Option(
    "--num-classes", min=1, show_default=False,
    help="Classifier size, e.g. to match a fine-tuned --weights file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]

out = Console(highlight=False)
"""Human-readable results go to stdout; errors go to stderr in :func:`cafeslim.cli.app.main`."""


def load_model(name: str, weights: Optional[Path], pretrained: bool,
               num_classes: Optional[int]) -> "ModelInfo":
    """Create the model named on the command line (see :func:`cafeslim.models.create`).

    Example:
        >>> info = load_model("timm:test_resnet", None, False, None)
    """
    from ..models import create

    return create(name, pretrained=pretrained, weights=weights, num_classes=num_classes)


def ensure_empty_dir(path: Path, force: bool) -> Path:
    """Check that ``path`` can receive an export; nothing is created or deleted.

    With ``force`` an existing folder is written into and same-named files are overwritten;
    other files in it are left alone (deleting a folder the user mistyped is worse than
    leaving stale files).

    Raises:
        OutputExistsError: ``path`` is a file, or a non-empty folder and ``force`` is False.

    Example:
        >>> ensure_empty_dir(Path("exports/r18"), force=False)
        PosixPath('exports/r18')
    """
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(f"output folder {path} exists and is not empty; pass --force to "
                                "write into it anyway")
    return path


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON on stdout, without rich's highlighting or wrapping."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def human(n: float) -> str:
    """Short count with a metric suffix: ``4.11G``, ``25.56M``, ``512``.

    Example:
        >>> human(4_111_514_624)
        '4.11G'
    """
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def before_after(label: str, before: float, after: float) -> str:
    """One line ``label  before → after (ratio×)``.

    Example:
        >>> before_after("FLOPs", 4.1e9, 2.05e9)
        'FLOPs   4.10G → 2.05G (0.500×)'
    """
    ratio = after / before if before else float("nan")
    return f"{label:<7} {human(before)} → {human(after)} ({ratio:.3f}×)"
