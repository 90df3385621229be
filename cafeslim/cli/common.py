"""Pieces shared by the sub-commands: model options, choices, JSON and number output.

Nothing here imports torch at module level: ``cafeslim --help`` must stay fast.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from ..units import human

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

def choice_enum(config: type, name: str) -> Any:
    """A ``str`` Enum of a settings field's ``Literal`` values, for a typer option.

    The allowed values are written once, in the config dataclass (:mod:`cafeslim.config`).

    Example:
        >>> from cafeslim.config import SearchConfig
        >>> [m.value for m in choice_enum(SearchConfig, "method")]
        ['cafenet', 'fixed', 'uniform']
    """
    from enum import Enum

    from ..config import choices

    values = choices(config, name)
    return Enum(f"{config.__name__}_{name}", {v: v for v in values}, type=str)


out = Console(highlight=False)
"""Human-readable results go to stdout; errors go to stderr in :func:`cafeslim.cli.app.main`."""


ImgSizeOpt = Annotated[Optional[int], typer.Option(
    "--img-size", min=8, show_default=False,
    help="Square input side instead of the model's default (detection: 320, the transform "
         "keeps it; video: the clip's H = W).")]
FeaturesOnlyOpt = Annotated[bool, typer.Option(
    "--features-only", help="A timm model's features_only=True form (its feature maps, as "
                            "detection code uses a backbone).")]


def load_model(name: str, weights: Optional[Path], pretrained: bool,
               num_classes: Optional[int], img_size: Optional[int] = None,
               features_only: bool = False) -> "ModelInfo":
    """Create the model named on the command line (see :func:`cafeslim.models.create`).

    Example:
        >>> info = load_model("timm:test_resnet", None, False, None)
    """
    from ..models import create

    return create(name, pretrained=pretrained, weights=weights, num_classes=num_classes,
                  img_size=img_size, features_only=features_only)


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON on stdout, without rich's highlighting or wrapping."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def before_after(label: str, before: float, after: float) -> str:
    """One line ``label  before → after (ratio×)``.

    Example:
        >>> before_after("FLOPs", 4.1e9, 2.05e9)
        'FLOPs   4.10G → 2.05G (0.500×)'
    """
    ratio = after / before if before else float("nan")
    return f"{label:<7} {human(before)} → {human(after)} ({ratio:.3f}×)"


def set_threads(threads: Optional[int]) -> int:
    """Use ``threads`` CPU threads; by default the idle cores (all on a quiet machine), >= 1.

    An OpenMP thread whose core is busy spins instead of sleeping, so on a shared machine two
    threads can be several times slower than one (5× measured on two cores at load 4).
    ``OMP_NUM_THREADS`` in the environment is respected as it is.

    Example:
        >>> set_threads(1)
        1
    """
    import torch

    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        idle = idle_cores()
        if idle is None:
            return torch.get_num_threads()
        threads = max(1, min(torch.get_num_threads(), int(idle + 0.5)))
    torch.set_num_threads(threads)
    return threads


def idle_cores(seconds: float = 0.2) -> Optional[float]:
    """How many cores are idle now: /proc/stat sampled over ``seconds``, else the load average.

    Not the load average alone: it trails by a minute, so in a chain of commands (search, then
    train, then eval) each one saw the previous one's load and took a single thread on an
    otherwise idle 2-core machine.

    Example:
        >>> 0 <= idle_cores() <= os.cpu_count()
        True
    """
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    cores = os.cpu_count() or 1
    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
        if total1 > total0:
            return cores * (idle1 - idle0) / (total1 - total0)
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows)
        pass
    try:
        return max(0.0, cores - os.getloadavg()[0])
    except OSError:
        return None
