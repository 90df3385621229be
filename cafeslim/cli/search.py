"""``cafeslim search``: train a locally free supernet and search the widths for FLOPs budgets.

The flags are collected here and resolved by :func:`cafeslim.config.resolve_settings`
(**flags > --config YAML > demo preset > defaults**); then the command makes exactly one
library call, :func:`cafeslim.pipeline.run_search`. The choices of ``--method``,
``--searcher`` and ``--device`` are the config dataclasses' ``Literal`` values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..config import BinsConfig, RunSettings, SearchConfig, TrainConfig, load_settings, resolve_settings
from ..errors import ConfigError
from ..pipeline.rundir import default_run_dir
from .aug import (AaOpt, AugOpt, HflipOpt, NoAugOpt, RatioOpt, ReprobOpt, ScaleOpt, ShiftOpt,
                  aug_flags)
from .common import ModelArg, PretrainedOpt, WeightsOpt, choice_enum, human, out, set_threads


Method = choice_enum(SearchConfig, "method")  # cafenet: locally free; fixed: r = 0; uniform
SearcherChoice = choice_enum(SearchConfig, "searcher")  # evolution (CafeNet-E), random (-R)
Device = choice_enum(TrainConfig, "device")
Sampling = choice_enum(TrainConfig, "sampling")
Order = choice_enum(BinsConfig, "order")  # which channels a width keeps first
TaskChoice = choice_enum(RunSettings, "task")  # what the network predicts


def _opt(*names: str, help: str, **kw: Any) -> Any:  # noqa: A002 - typer's keyword
    return typer.Option(*names, help=help, show_default=False, **kw)


FlopsOpt = Annotated[Optional[str], _opt("--flops", metavar="B", help=(
    "FLOPs budget(s): 2G, 300M, 50% (of the full model), 0.5x; several comma-separated "
    "(1G,2G) are searched on one supernet."))]
DataOpt = Annotated[Optional[str], _opt("--data", metavar="demo|demo-hard|DIR", help=(
    "demo (built-in digits, default), demo-hard (synthetic composites of them) or an "
    "ImageNet-layout folder (train/CLASS/*, optional val/). Segmentation: train/images/ + "
    "train/masks/ (or VOC's layout); multilabel: train/labels.csv (or CelebA's files); "
    "docs/tasks.md."))]
TaskOpt = Annotated[Optional[TaskChoice], _opt("--task", case_sensitive=False, help=(
    "classification (default: cross-entropy, D_val top-1), segmentation (per-pixel "
    "cross-entropy, D_val mIoU; e.g. tv:lraspp_mobilenet_v3_large) or multilabel (binary "
    "cross-entropy, D_val mean label accuracy); --data demo has a demo of each."))]
OutOpt = Annotated[Optional[Path], _opt("--out", metavar="DIR",
                                        help="Run folder (default runs/MODEL-BUDGET).")]
ConfigOpt = Annotated[Optional[Path], _opt("--config", metavar="YAML", help=(
    "Settings file with model/data keys and train:, search:, bins: sections (flags win)."))]
ResumeOpt = Annotated[bool, typer.Option("--resume", help=(
    "Continue an interrupted run in its folder (training or search)."))]
ForceOpt = Annotated[bool, typer.Option("--force", help=(
    "Start over in a non-empty run folder (deletes only the run's own files)."))]
MethodOpt = Annotated[Optional[Method], _opt("--method", case_sensitive=False, help=(
    "cafenet (default), fixed (r = 0, AutoSlim-style), uniform (no supernet: the same "
    "fraction of every layer) or random (the paper's Random baseline: --random-n widths of "
    "the window, each trained --random-epochs stand-alone, the best D_val score kept)."))]
SearcherOpt = Annotated[Optional[SearcherChoice], _opt("--searcher", case_sensitive=False, help=(
    "evolution (default) or random."))]
DeviceOpt = Annotated[Optional[Device], _opt("--device", case_sensitive=False,
                                             help="auto (default: CUDA if available), cpu, cuda.")]
AmpOpt = Annotated[Optional[bool], _opt("--amp/--no-amp", help=(
    "bf16 autocast on CUDA (fp16: amp: fp16 in the config's train: section)."))]


SamplingOpt = Annotated[Optional[Sampling], _opt("--sampling", case_sensitive=False, help=(
    "Widths of the min-min steps: uniform over the bins (default, Eq. 1), budget (inside the "
    "FLOPs windows of the budgets and stages) or mixed (--sampling-mix of budget)."))]


def _int(name: str, help: str, *short: str, lo: int = 1) -> Any:  # noqa: A002
    return Annotated[Optional[int], _opt(name, *short, min=lo, help=help)]


def _float(name: str, help: str) -> Any:  # noqa: A002
    return Annotated[Optional[float], _opt(name, help=help)]


EpochsOpt = _int("--epochs", "Supernet training epochs per stage (demo 6, demo-hard 50, else 10 or enough for 2,000 steps).")
PopOpt = _int("--population", "Evolution: individuals per generation (demo 12, else 40).", lo=2)
ItersOpt = _int("--iterations", "Evolution: generations (demo 6, else 50).")
SamplesOpt = _int("--samples", "Random search: width vectors (demo 72, else 2000).")
StagesOpt = _int("--stages", "Multi-stage search (Eq. 10): T stages (default 1).")
AlphaOpt = _float("--alpha", "Bin evolving speed: β is divided by α each stage (default 2).")
BetaOpt = _float("--beta", "β of Eq. 9: bin size of the most FLOPs-sensitive group (default 1).")
DivisorOpt = _int("--divisor", "Round bin sizes up to a multiple of this (default 1; 8 suits GPUs).")
OffsetOpt = _int("--offset", "r of Eq. 5, the locally free zone (default 1).", lo=0)
BatchOpt = _int("--batch-size", "Images per step and per process (default 64).", "-b")
WorkersOpt = _int("--workers", "Data-loading processes (default 4; demo uses 0).", "-j", lo=0)
SeedOpt = _int("--seed", "Seeds weights, data order, D_val split and the search.", lo=0)
EvalOpt = _int("--eval-batches", "D_val batches per evaluated width (default: all of D_val).")
RecalOpt = _int("--recal-batches", "Training batches per BN recalibration (demo 2, else 4).")
ImgOpt = _int("--img-size", "Square input size (demo 64, else the model's own).", lo=8)
RandomNOpt = _int("--random-n", "--method random: width vectors trained per budget (default 8).")
RandomEpochsOpt = _int("--random-epochs", "--method random: epochs each is trained (default 1).")
SamplingMixOpt = _float("--sampling-mix", "--sampling mixed: the budget fraction (default 0.5).")
ThreadsOpt = _int("--threads", "CPU threads for PyTorch (default: the idle cores, at least 1).")
OrderOpt = Annotated[Optional[Order], _opt("--order", case_sensitive=False, help=(
    "Channel order: l1 (largest L1 norm first; default with --pretrained/--weights) or "
    "natural (the first channels; default for random weights)."))]


def search_command(model: ModelArg, flops: FlopsOpt = None, data: DataOpt = None,
                   epochs: EpochsOpt = None, out_dir: OutOpt = None, config: ConfigOpt = None,
                   resume: ResumeOpt = False, force: ForceOpt = False,
                   searcher: SearcherOpt = None, population: PopOpt = None,
                   iterations: ItersOpt = None, samples: SamplesOpt = None,
                   method: MethodOpt = None, stages: StagesOpt = None, alpha: AlphaOpt = None,
                   beta: BetaOpt = None, divisor: DivisorOpt = None, offset: OffsetOpt = None,
                   batch_size: BatchOpt = None, workers: WorkersOpt = None,
                   device: DeviceOpt = None, amp: AmpOpt = None, seed: SeedOpt = None,
                   eval_batches: EvalOpt = None, recal_batches: RecalOpt = None,
                   img_size: ImgOpt = None, random_n: RandomNOpt = None,
                   random_epochs: RandomEpochsOpt = None, sampling: SamplingOpt = None,
                   sampling_mix: SamplingMixOpt = None, aug: AugOpt = None,
                   no_aug: NoAugOpt = False, scale: ScaleOpt = None, ratio: RatioOpt = None,
                   hflip: HflipOpt = None, aa: AaOpt = None, reprob: ReprobOpt = None,
                   shift: ShiftOpt = None, threads: ThreadsOpt = None,
                   weights: WeightsOpt = None, pretrained: PretrainedOpt = False,
                   order: OrderOpt = None, task: TaskOpt = None) -> None:
    """Train a CafeNet supernet on MODEL and search its per-layer widths under FLOPs budgets.

    Analyses the model, makes FLOPs-sensitive bins, trains the supernet with min-min steps,
    runs a max-max evolutionary (or random) search for every budget and writes the run folder:
    config.yaml, graph.json, bins.json, last.pt, metrics.jsonl, search.jsonl, result.json and
    report.md with plots. Ctrl-C (or a kill) loses at most the current epoch or generation:
    rerun the same command with --resume. Export the result with `cafeslim export RUN`.

    Examples:

        cafeslim search timm:test_resnet --flops 50%

        cafeslim search tv:resnet50 --pretrained --flops 2G --data /data/imagenet --epochs 10

        cafeslim search tv:mobilenet_v2 --flops 150M,300M --searcher random --samples 2000 --data DIR

        cafeslim search timm:test_resnet --flops 50% --method uniform

        cafeslim search timm:test_resnet --flops 50% --method random --random-n 8

        cafeslim search tv:resnet18 --flops 50% --data DIR --scale 0.35 1 --hflip 0.5 --sampling mixed

        cafeslim search timm:test_resnet --flops 50% --resume

        cafeslim search tv:lraspp_mobilenet_v3_large --task segmentation --flops 50%

        cafeslim search timm:test_resnet --task multilabel --flops 50% --data /data/celeba
    """
    flags = {
        "train": {"epochs": epochs, "batch_size": batch_size, "workers": workers,
                  "device": device.value if device else None, "seed": seed, "img_size": img_size,
                  "offset": offset, "amp": None if amp is None else ("bf16" if amp else "off"),
                  "sampling": sampling.value if sampling else None, "sampling_mix": sampling_mix,
                  **aug_flags(aug, no_aug, scale, ratio, hflip, aa, reprob, shift)},
        "search": {"flops": flops, "method": method.value if method else None,
                   "searcher": searcher.value if searcher else None, "population": population,
                   "iterations": iterations, "samples": samples, "stages": stages,
                   "alpha": alpha, "eval_batches": eval_batches, "recal_batches": recal_batches,
                   "random_n": random_n, "random_epochs": random_epochs},
        "bins": {"beta": beta, "divisor": divisor, "order": order.value if order else None},
    }
    from ..pipeline import run_search

    task_value = task.value if task is not None else None
    if resume:
        if config is not None:
            raise ConfigError("--resume takes the run's own config.yaml; drop --config")
        if out_dir is None:  # the default folder follows from the flags as on the first run
            out_dir = default_run_dir(resolve_settings(model, None, data, flags, pretrained, weights,
                                                       task=task_value))
        saved = load_settings(out_dir).to_dict()
        settings = resolve_settings(model, saved, data, flags, pretrained or None, weights,
                                    preset=False, task=task_value)
    else:
        settings = resolve_settings(model, config, data, flags, pretrained, weights,
                                    task=task_value)
        out_dir = out_dir or default_run_dir(settings)
    set_threads(threads)
    res = run_search(settings, out_dir, resume=resume, force=force)
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for every rank
        render_result(res.run_dir, res.result)


def render_result(run_dir: Path, result: Mapping[str, Any]) -> None:
    """Print the per-budget summary and where the report is, on stdout.

    Example:
        >>> render_result(Path("runs/x"), read_result("runs/x"))                # doctest: +SKIP
    """
    full = result["full"]
    table = Table(title=f"{result['model']} ({result['method']}): full {human(full['flops'])} "
                        f"FLOPs, {human(full['params'])} params", title_justify="left",
                  box=box.SIMPLE_HEAD)
    from ..pipeline.report import SCORE, score_cell

    # D_val is what the search selected on: its top-1 ranks widths, it is not an accuracy.
    # Two-line header: the table must fit 80 columns without truncating the FLOPs.
    for head in ("budget", "FLOPs", "params", SCORE.replace(" (", "\n("), "evaluated"):
        table.add_column(head, justify="left" if head == "budget" else "right", no_wrap=True)
    for b in result["budgets"]:
        table.add_row(b["budget"], f"{human(b['flops'])} ({b['flops_ratio']:.3f}×)",
                      f"{human(b['params'])} ({b['params_ratio']:.3f}×)", score_cell(result, b),
                      str(b["evaluated"]))
    out.print(table)
    label = (result.get("score") or {}).get("label", "top-1")  # the task's metric
    out.print(Text(f"D_val score: {label} on the images the search selected on, a selection "
                   "score, not the model's accuracy" + (" (uniform trains no weights: none to "
                                                        "show)" if result["method"] == "uniform" else "")))
    out.print(Text(f"the accuracy to quote: cafeslim train {run_dir}, then cafeslim eval "
                   f"{run_dir}/train (test split, trained with the same recipe for every method)"))
    out.print(Text(f"wrote {run_dir}/result.json and {run_dir}/report.md ({result['seconds']:.0f} s)"))
    out.print(Text(f"export the widths: cafeslim export {run_dir}"))
