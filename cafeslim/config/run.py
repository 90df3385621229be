"""A run's settings (what ``config.yaml`` holds), the demo preset and the method rules.

:func:`resolve_settings` is the one place a run's settings are put together, with the
precedence **flags > --config YAML > demo preset > defaults**. The method rules live here and
nowhere else: ``fixed`` means offset 0 (an explicit ``--offset`` > 0 is a contradiction; a
YAML or default offset is overridden), ``uniform`` trains no supernet (so it takes no stages,
see :class:`~cafeslim.config.SearchConfig`).

Example:
    >>> resolve_settings("timm:test_resnet", None, None, {"search": {"flops": "50%"}}).train.epochs
    6
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Union

from ..errors import CheckpointError, ConfigError
from .files import load_yaml, resolve, section, to_dict
from .stages import BinsConfig, SearchConfig, TrainConfig

RUN_FORMAT = "cafeslim.run/1"
DEMO = "demo"
CONFIG_FILE = "config.yaml"
DEMO_PRESET: Dict[str, Dict[str, Any]] = {  # measured: D_val score 98.6% at 50% FLOPs (README)
    "train": {"epochs": 6, "lr": 0.2, "warmup_epochs": 0.5, "log_every": 5},
    "search": {"population": 12, "iterations": 6, "parents": 4, "samples": 72,
               "recal_batches": 2},
}
"""The small settings of ``--data demo``: the README command takes minutes on two CPU cores
(real data get the paper's defaults). Its search part is also the Python API's default."""
DEMO_HARD_TRAIN: Dict[str, Any] = {"epochs": 50, "lr": 0.1}
"""Over :data:`DEMO_PRESET`'s ``train`` for ``demo-hard``: its 2,588 training composites need
longer (6 epochs at lr 0.2 left the supernet's loss at 2.14, near chance 2.30, and its D_val
score at 26%; 50 epochs at lr 0.1: loss 0.92, 79%; docs/training.md)."""
DEMO_TRAINED_START: Dict[str, Any] = {"lr": 0.02, "warmup_epochs": 0}
"""Over :data:`DEMO_PRESET`'s ``train`` when the original has weights: the scratch lr (0.2)
erases what the original learned (fine-tuned 50% model 98.05% test top-1 against 99.16% at
0.02, original 99.44%; docs/training.md)."""
DEMO_IMG_SIZE = 64  # the digits are 8×8: a larger input only costs time
DEMO_HARD = "demo-hard"
BUILTIN_IMG_SIZE = {DEMO: DEMO_IMG_SIZE, DEMO_HARD: 32}
"""The built-in data sets (``cafeslim.data``) and their default input size (the hard
composites are drawn on a 32 px canvas). Both get :data:`DEMO_PRESET`."""
_TOP = {"format", "model", "task", "data", "pretrained", "weights", "train", "search", "bins"}
TaskName = Literal["classification", "segmentation", "multilabel"]
"""What the network predicts (:mod:`cafeslim.tasks`): the choices of ``--task``."""


def task_name(value: Any) -> str:
    """A task name checked against :data:`TaskName` (None: ``classification``, old runs).

    Raises:
        ConfigError: not one of the tasks.

    Example:
        >>> task_name(None), task_name("segmentation")
        ('classification', 'segmentation')
    """
    if value is None:
        return "classification"
    valid = typing.get_args(TaskName)
    if value not in valid:
        raise ConfigError(f"invalid task {value!r}; choose from {', '.join(valid)}")
    return str(value)


def demo_preset(data: str, task: str, trained: bool) -> Dict[str, Dict[str, Any]]:
    """The preset settings of built-in data for a task (empty for a folder).

    :data:`DEMO_PRESET`, with ``demo-hard``'s longer training, a task's own demo settings
    (:attr:`cafeslim.tasks.Task.demo_preset`: its demo may need more steps or a smaller
    search) and, when the original has weights, :data:`DEMO_TRAINED_START`.

    Example:
        >>> demo_preset("demo", "classification", False)["train"]["epochs"]
        6
    """
    if data not in BUILTIN_IMG_SIZE:
        return {}
    from ..tasks import get_task  # torch is imported here, at run time, not for --help

    pre = {name: dict(block) for name, block in DEMO_PRESET.items()}
    if data == DEMO_HARD:
        pre["train"].update(DEMO_HARD_TRAIN)
    for name, block in get_task(task).demo_preset.items():
        pre.setdefault(name, {}).update(block)
    if trained:
        pre["train"].update(DEMO_TRAINED_START)
    return pre


def default_order(order: Optional[str], has_weights: bool) -> str:
    """The channel order of a search or export: given, else ``l1`` for trained weights.

    With random weights every channel is alike, so the natural order is as good as any; with
    pretrained (``--pretrained``/``--weights``) weights the largest-L1 channels carry the most
    and keeping them first makes the supernet's narrow sub-networks start from the best ones.

    Example:
        >>> default_order(None, True), default_order(None, False), default_order("natural", True)
        ('l1', 'natural', 'natural')
    """
    if order is not None:
        return str(order)
    return "l1" if has_weights else "natural"


def method_offset(method: str, offset: Optional[int]) -> Optional[int]:
    """The offset a method implies: ``fixed`` is r = 0, the others keep ``offset``.

    Raises:
        ConfigError: ``fixed`` with an explicit offset other than 0.

    Example:
        >>> method_offset("fixed", None), method_offset("cafenet", 2)
        (0, 2)
    """
    if method != "fixed":
        return offset
    if offset not in (None, 0):
        raise ConfigError(f"--method fixed is r = 0; it takes no --offset {offset}")
    return 0


@dataclass(frozen=True)
class RunSettings:
    """Everything a run depends on: what ``config.yaml`` holds.

    A ``fixed`` run's offset is always 0 (:func:`method_offset`), whatever ``train`` says.

    ``task`` (:mod:`cafeslim.tasks`) decides the loss, the search's fitness and the metric
    that ``train`` and ``eval`` report; a ``config.yaml`` written before tasks existed has no
    ``task:`` and loads as ``classification``.

    Example:
        >>> RunSettings("timm:test_resnet", search=SearchConfig(flops="50%")).search.budgets
        ['50%']
    """

    model: str
    data: str = DEMO
    task: TaskName = "classification"
    pretrained: bool = False
    weights: Optional[str] = None
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    bins: BinsConfig = field(default_factory=BinsConfig)

    def __post_init__(self) -> None:
        task_name(self.task)
        offset = method_offset(self.search.method, None)
        if offset is not None and self.train.offset != offset:
            object.__setattr__(self, "train", replace(self.train, offset=offset))

    def to_dict(self) -> Dict[str, Any]:
        """The ``config.yaml`` document."""
        return {"format": RUN_FORMAT, "model": self.model, "task": self.task, "data": self.data,
                "pretrained": self.pretrained, "weights": self.weights,
                "train": to_dict(self.train), "search": to_dict(self.search),
                "bins": to_dict(self.bins)}

    @classmethod
    def from_dict(cls, y: Mapping[str, Any]) -> "RunSettings":
        """Inverse of :meth:`to_dict`; missing keys take their defaults (ConfigError if bad)."""
        if not y.get("model"):
            raise ConfigError("the settings name no model")
        data, train = str(y.get("data") or DEMO), section(y, "train")
        if y.get("format") == RUN_FORMAT and train and "aug" not in train:
            # Written before the supernet had augmentation settings: keep what it trained with.
            train["aug"] = "none" if data == DEMO else "timm"
        return cls(model=str(y["model"]), data=data, task=task_name(y.get("task")),
                   pretrained=bool(y.get("pretrained", False)), weights=y.get("weights"),
                   train=resolve(TrainConfig, None, train),
                   search=resolve(SearchConfig, None, section(y, "search")),
                   bins=resolve(BinsConfig, None, section(y, "bins")))


def load_settings(run_dir: Union[str, Path]) -> RunSettings:
    """The settings a run was made with (its ``config.yaml``); CheckpointError if none.

    Example:
        >>> load_settings("runs/test_resnet-50pct").search.flops    # doctest: +SKIP
        '50%'
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not a cafeslim run folder (no {CONFIG_FILE})")
    y = load_yaml(run_dir / CONFIG_FILE)
    if y.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} is not a cafeslim search config")
    return RunSettings.from_dict(y)


def resolve_settings(model: Optional[str], config: Any, data: Optional[str],
                     flags: Mapping[str, Mapping[str, Any]], pretrained: Optional[bool] = None,
                     weights: Optional[Union[str, Path]] = None,
                     preset: bool = True, task: Optional[str] = None) -> RunSettings:
    """Settings from flags > YAML (a path or a loaded mapping) > demo preset > defaults.

    Args:
        model: the model name (None: the YAML's ``model:``).
        config: a YAML path, an already loaded mapping (a run's ``config.yaml``), or None.
        data: ``demo`` or a folder (None: the YAML's, else ``demo``).
        flags: ``{"train": {...}, "search": {...}, "bins": {...}}``; None values are not given.
        pretrained, weights: the model's initial weights (flags win over the YAML).
        preset: apply :data:`DEMO_PRESET` for demo data (False when resuming a saved run).
        task: ``classification``, ``segmentation`` or ``multilabel`` (None: the YAML's, else
            ``classification``).

    Raises:
        ConfigError: unknown sections or keys, invalid values, or a contradiction
            (``--method fixed`` with ``--offset`` > 0).

    Example:
        >>> resolve_settings("m", None, None, {"search": {"method": "fixed"}}).train.offset
        0
    """
    y = dict(config) if isinstance(config, Mapping) else (load_yaml(config) if config else {})
    unknown = sorted(set(y) - _TOP)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}; valid: "
                          f"{', '.join(sorted(_TOP - {'format'}))}")
    data = str(data or y.get("data") or DEMO)
    is_pretrained = bool(pretrained if pretrained else y.get("pretrained", False))
    weights = str(weights) if weights is not None else y.get("weights")
    task = task_name(task if task is not None else y.get("task"))
    pre = demo_preset(data, task, is_pretrained or bool(weights)) if preset else {}
    layer = {name: {**pre.get(name, {}), **section(y, name)} for name in ("train", "search", "bins")}
    search = resolve(SearchConfig, flags.get("search"), layer["search"])
    train_flags: Dict[str, Any] = dict(flags.get("train") or {})
    train_flags["offset"] = method_offset(search.method, train_flags.get("offset"))
    name = model or y.get("model")
    if not name:
        raise ConfigError("no model: pass MODEL or set model: in the config file")
    bins_flags: Dict[str, Any] = dict(flags.get("bins") or {})
    # Resolved here, so the order actually used is what config.yaml records.
    given = bins_flags.get("order") if bins_flags.get("order") is not None else layer["bins"].get("order")
    bins_flags["order"] = default_order(given, is_pretrained or bool(weights))
    return RunSettings(
        model=str(name), data=data, task=task, search=search, pretrained=is_pretrained, weights=weights,
        train=resolve(TrainConfig, train_flags, layer["train"]),
        bins=resolve(BinsConfig, bins_flags, layer["bins"]))


__all__ = ["BUILTIN_IMG_SIZE", "CONFIG_FILE", "DEMO", "DEMO_HARD", "DEMO_IMG_SIZE", "DEMO_PRESET",
           "DEMO_HARD_TRAIN", "DEMO_TRAINED_START", "RUN_FORMAT", "RunSettings", "TaskName",
           "default_order", "demo_preset", "load_settings", "method_offset", "resolve_settings",
           "task_name"]
