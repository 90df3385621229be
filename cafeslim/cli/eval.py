"""``cafeslim eval``: accuracy, FLOPs, params and latency of an export, as ratios to the original."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, List, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..config import RunSettings
from ..errors import ConfigError
from .common import JsonOpt, choice_enum, human, out, print_json

if TYPE_CHECKING:
    from ..export.evaluate import EvalReport

TargetArg = Annotated[str, typer.Argument(
    metavar="EXPORT|RUN|MODEL", show_default=False,
    help="An export folder (model.pt/.pt2/.onnx + widths.json), a search run folder (its "
         "export/), one of those model files, or a model name (the original alone).")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", metavar="demo|demo-hard|DIR", show_default=False,
    help="Accuracy on DIR/val/ or the built-in data's held-out test split (default: the "
    "run's data).")]
BatchesOpt = Annotated[str, typer.Option(
    "--batch-sizes", metavar="LIST", help="Latency batch sizes, comma-separated.")]
RepeatsOpt = Annotated[int, typer.Option(
    "--repeats", min=3, help="Timed runs per latency (the median is reported), at most.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, show_default=False,
    help="CPU threads for PyTorch and onnxruntime (default: the idle cores, at least 1).")]
TaskChoice = choice_enum(RunSettings, "task")
TaskOpt = Annotated[Optional[TaskChoice], typer.Option(
    "--task", case_sensitive=False, show_default=False,
    help="classification, segmentation or multilabel, for a MODEL name (an export records its "
         "own), e.g. `cafeslim eval tv:lraspp_mobilenet_v3_large --task segmentation --data DIR`.")]


def eval_command(target: TargetArg, data: DataOpt = None, batch_sizes: BatchesOpt = "1,32",
                 repeats: RepeatsOpt = 20, threads: ThreadsOpt = None,
                 json_out: JsonOpt = False, task: TaskOpt = None) -> None:
    """Evaluate an exported model against the original: accuracy, FLOPs, params, latency.

    The task's metrics (top-1/top-5; segmentation mIoU and pixel accuracy; multi-label mean
    label accuracy and exact match) on the held-out split (val/ of the data folder, or the
    demo's test part),
    fvcore FLOPs and parameters, and the median latency in PyTorch and onnxruntime at each
    batch size on this machine; every number also as a ratio to the original model.

    Examples:

        cafeslim eval runs/test_resnet-50pct/export

        cafeslim eval exports/r50 --data /data/imagenet --batch-sizes 1,32,128

        cafeslim eval tv:resnet18 --batch-sizes 1 --json

        cafeslim eval runs/lraspp_mobilenet_v3_large-50pct-segmentation/train
    """
    sizes = parse_sizes(batch_sizes)
    from ..export.evaluate import evaluate
    from .common import set_threads

    rep = evaluate(target, data, batch_sizes=sizes, repeats=repeats, threads=set_threads(threads),
                   task=task.value if task is not None else None)
    if json_out:
        print_json(rep.to_json())
    else:
        render_eval(rep)


def parse_sizes(text: str) -> List[int]:
    """``"1,32"`` -> ``[1, 32]``.

    Example:
        >>> parse_sizes("1, 32")
        [1, 32]
    """
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes takes positive integers, comma-separated; got {text!r}")
    return sizes


def _fmt(name: str, v: Optional[float], unit: str = "") -> str:
    if v is None:
        return "–"
    if unit == "%":  # the task's metrics: top-1, mIoU, mean label accuracy, ...
        return f"{100 * v:.2f}%"
    if name.startswith("latency"):
        return f"{1000 * v:.2f} ms"
    return human(v)


def render_eval(rep: "EvalReport") -> None:
    """Print the evaluation table on stdout.

    Example:
        >>> render_eval(evaluate("runs/x/export"))                              # doctest: +SKIP
    """
    where = f"{rep.data}: {rep.images} held-out images" if rep.data else "no accuracy data"
    table = Table(title=f"{rep.target} vs {rep.source} ({'×'.join(map(str, rep.input_size))}; "
                        f"{where}; {rep.threads} thread{'s' if rep.threads != 1 else ''})", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for head in ("metric", "this", "original", "ratio"):
        table.add_column(head, justify="left" if head == "metric" else "right", no_wrap=True)
    for m in rep.metrics:
        table.add_row(m.name, _fmt(m.name, m.value, m.unit), _fmt(m.name, m.original, m.unit),
                      "–" if m.ratio is None else f"{m.ratio:.3f}×")
    out.print(table)
    for note in rep.notes:
        out.print(Text(f"note: {note}"))


__all__ = ["eval_command", "parse_sizes", "render_eval"]
