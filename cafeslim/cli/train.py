"""``cafeslim train TARGET``: train a searched sub-network (or an export, or a model) to the end.

Flags follow timm's ``train.py`` where a user looks for them; they are resolved into a
:class:`~cafeslim.config.RetrainConfig` with the precedence **flags > --config YAML (its
``train:`` section) > defaults**; with ``--resume`` the training folder's own ``config.yaml``
takes the YAML's place. Then one library call: :func:`cafeslim.training.run.train_target`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, Optional

import typer
from rich.text import Text

from ..config import RetrainConfig, RunSettings, load_yaml, resolve, section
from ..errors import ConfigError
from .common import choice_enum, out

Opt = choice_enum(RetrainConfig, "opt")
Sched = choice_enum(RetrainConfig, "sched")
Amp = choice_enum(RetrainConfig, "amp")
Device = choice_enum(RetrainConfig, "device")
Init = choice_enum(RetrainConfig, "init")
Aug = choice_enum(RetrainConfig, "aug")
TaskChoice = choice_enum(RunSettings, "task")


def _o(*names: str, help: str, **kw: Any) -> Any:  # noqa: A002 - typer's keyword
    return typer.Option(*names, help=help, show_default=False, **kw)


def _int(name: str, help: str, *short: str, lo: int = 1) -> Any:  # noqa: A002
    return Annotated[Optional[int], _o(name, *short, min=lo, help=help)]


def _float(name: str, help: str) -> Any:  # noqa: A002
    return Annotated[Optional[float], _o(name, help=help)]


TargetArg = Annotated[str, typer.Argument(
    metavar="RUN|EXPORT|MODEL", show_default=False,
    help="A `cafeslim search` run folder (its chosen sub-network), an export folder, or a model "
         "name (trains the original, e.g. to make a teacher).")]
DataOpt = Annotated[Optional[str], _o("--data", metavar="demo|demo-hard|DIR", help=(
    "demo, demo-hard or an ImageNet-layout folder (train/, and val/ as the test split); default: the "
    "target's own data."))]
BudgetOpt = Annotated[Optional[str], _o("--budget", metavar="B", help=(
    "RUN only: which of the run's budgets, if it searched several."))]
OutOpt = Annotated[Optional[Path], _o("--out", metavar="DIR", help=(
    "Training folder (default RUN/train, EXPORT/train or runs/MODEL-train)."))]
ConfigOpt = Annotated[Optional[Path], _o("--config", metavar="YAML", help=(
    "Settings file whose train: section sets any RetrainConfig field (flags win)."))]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted training.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Start over in a non-empty folder.")]
EpochsOpt = _int("--epochs", "Training epochs (default 15).")
BatchOpt = _int("--batch-size", "Images per step (default 64).", "-b")
LrOpt = _float("--lr", "Peak learning rate (default 0.1·b/64 for SGD, 1e-3·b/64 for AdamW).")
OptOpt = Annotated[Optional[Opt], _o("--opt", case_sensitive=False, help="sgd (default) or adamw.")]
SchedOpt = Annotated[Optional[Sched], _o("--sched", case_sensitive=False,
                                         help="cosine (default) or step.")]
WarmOpt = _float("--warmup-epochs", "Linear warmup epochs (default 1).")
WdOpt = _float("--weight-decay", "Weight decay (default 5e-5 SGD, 0.05 AdamW).")
LsOpt = _float("--label-smoothing", "Label smoothing (default 0.1).")
MixupOpt = _float("--mixup", "Mixup alpha (default 0: off).")
CutmixOpt = _float("--cutmix", "CutMix alpha (default 0: off).")
EmaOpt = Annotated[Optional[bool], _o("--model-ema/--no-model-ema", help=(
    "Keep an EMA of the weights and evaluate, keep and export it."))]
WorkersOpt = _int("--workers", "Data-loading processes (default 4; demo uses 0).", "-j", lo=0)
AmpOpt = Annotated[Optional[Amp], _o("--amp", case_sensitive=False, help="off, bf16 or fp16.")]
DeviceOpt = Annotated[Optional[Device], _o("--device", case_sensitive=False,
                                           help="auto (default), cpu or cuda.")]
SeedOpt = _int("--seed", "Seeds weights, data order, augmentation and the holdout.", lo=0)
ImgOpt = _int("--img-size", "Square input size (default: the target's).", lo=8)
AugOpt = Annotated[Optional[Aug], _o("--aug", case_sensitive=False, help=(
    "auto (shift for demo and ≤ 64 px images, else timm), timm, shift or none."))]
InitOpt = Annotated[Optional[Init], _o("--init", case_sensitive=False, help=(
    "scratch (default: the family's own initialisation at the searched widths) or inherit "
    "(supernet / export / pretrained weights)."))]
TeacherOpt = Annotated[Optional[str], _o("--teacher", metavar="original|supernet|none|MODEL", help=(
    "Knowledge distillation (default original when it has weights, else none)."))]
AlphaOpt = _float("--kd-alpha", "Weight of the distillation term (default 0.5).")
TempOpt = _float("--kd-temperature", "Distillation temperature (default 4).")
ThreadsOpt = _int("--threads", "CPU threads for PyTorch (default: the idle cores, at least 1).")
CkptOpt = _int("--ckpt-every", "Steps between last.pt checkpoints besides every epoch's end "
               "(default 0: epochs only).", lo=0)
ClassesOpt = _int("--num-classes", "Classifier outputs (MODEL: builds the head; default: the "
                  "data's classes). The data must have as many classes.")
BnMomOpt = _float("--bn-momentum", "BatchNorm momentum for the training (default: the model's "
                  "own, or 0.1 where it is below 0.1 and the training shorter than 10/m steps, "
                  "e.g. torchvision's MobileNetV3 with 0.01).")
TaskOpt = Annotated[Optional[TaskChoice], _o("--task", case_sensitive=False, help=(
    "classification, segmentation or multilabel (default: the run's or export's; "
    "classification for a MODEL), e.g. `cafeslim train tv:lraspp_mobilenet_v3_large "
    "--task segmentation --data demo`."))]


def train_command(target: TargetArg, data: DataOpt = None, budget: BudgetOpt = None,
                  out_dir: OutOpt = None, config: ConfigOpt = None, resume: ResumeOpt = False,
                  force: ForceOpt = False, epochs: EpochsOpt = None, batch_size: BatchOpt = None,
                  lr: LrOpt = None, opt: OptOpt = None, sched: SchedOpt = None,
                  warmup_epochs: WarmOpt = None, weight_decay: WdOpt = None,
                  label_smoothing: LsOpt = None, mixup: MixupOpt = None, cutmix: CutmixOpt = None,
                  model_ema: EmaOpt = None, workers: WorkersOpt = None, amp: AmpOpt = None,
                  device: DeviceOpt = None, seed: SeedOpt = None, img_size: ImgOpt = None,
                  aug: AugOpt = None, init: InitOpt = None, teacher: TeacherOpt = None,
                  kd_alpha: AlphaOpt = None, kd_temperature: TempOpt = None,
                  threads: ThreadsOpt = None, ckpt_every: CkptOpt = None,
                  num_classes: ClassesOpt = None, task: TaskOpt = None,
                  bn_momentum: BnMomOpt = None) -> None:
    """Train the sub-network a search chose (RUN), an export, or a model, and export it again.

    Writes a train/ folder: config.yaml, last.pt (atomic; --resume continues bit-exactly),
    best.pt (best on a holdout split off the training images, never on the test split),
    metrics.jsonl, model.pt/.pt2/.onnx + widths.json with the trained test accuracy, and
    report.md with the learning curves. The test score it prints (top-1, or the task's mIoU or
    mean label accuracy) is the number to quote.

    Examples:

        cafeslim train runs/test_resnet-50pct

        cafeslim train runs/test_resnet-50pct-uniform

        cafeslim train tv:lraspp_mobilenet_v3_large --task segmentation --data DIR --epochs 30

        cafeslim train runs/lraspp_mobilenet_v3_large-50pct-segmentation

        cafeslim train timm:test_resnet --epochs 20 --out runs/teacher

        cafeslim train runs/r50-2G --data /data/imagenet --epochs 100 -b 256 --amp bf16
    """
    flags: Dict[str, Any] = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "opt": _v(opt), "sched": _v(sched),
        "warmup_epochs": warmup_epochs, "weight_decay": weight_decay,
        "label_smoothing": label_smoothing, "mixup": mixup, "cutmix": cutmix,
        "model_ema": model_ema, "workers": workers, "amp": _v(amp), "device": _v(device),
        "seed": seed, "img_size": img_size, "aug": _v(aug), "init": _v(init), "teacher": teacher,
        "kd_alpha": kd_alpha, "kd_temperature": kd_temperature, "ckpt_every": ckpt_every,
        "num_classes": num_classes, "task": _v(task), "bn_momentum": bn_momentum}
    from ..training.run import train_target
    from ..training.target import resolve_target
    from .common import set_threads

    if resume and config is not None:
        raise ConfigError("--resume takes the training's own config.yaml; drop --config")
    yaml_path = config
    if resume:
        yaml_path = (out_dir or resolve_target(target, budget).default_out()) / "config.yaml"
    yaml_values = section(load_yaml(yaml_path), "train") if yaml_path is not None else {}
    cfg = resolve(RetrainConfig, flags, yaml_values)
    set_threads(threads)
    res = train_target(target, cfg, data=data, budget=budget, out_dir=out_dir, resume=resume,
                       force=force)
    if not res.main:  # under torchrun rank 0 speaks for every rank
        return
    o = res.outcome
    from ..tasks import get_task

    scored = get_task(res.task).describe(o.test)  # classification: top-1 X%, top-5 Y%
    out.print(Text(f"{res.target.name}: test {scored} after {o.epochs} epochs "
                   f"(init {cfg.init}, teacher {res.teacher}; {o.images_per_s:.0f} images/s)"))
    for fmt, why in res.export_errors.items():
        out.print(Text(f"warning: export {fmt} failed: {why}"))
    for note in res.notes:
        out.print(Text(f"note: {note}"))
    out.print(Text(f"wrote {res.out_dir}/report.md; next: cafeslim eval {res.out_dir}"))


def _v(choice: Any) -> Optional[str]:
    return choice.value if choice is not None else None


__all__ = ["train_command"]
