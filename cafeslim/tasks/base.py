"""The :class:`Task` interface: everything cafeslim knows about what a network predicts.

A task decides, in one place, how every stage turns a model's output into numbers:

* :meth:`Task.select` — the tensor that is scored, out of a model's output (a tensor, a tuple
  such as Inception's ``(logits, aux)``, or a dict such as torchvision segmentation's
  ``{"out": ..., "aux": ...}``);
* :meth:`Task.loss_fn` / :meth:`Task.loss` — the supernet's min-min loss (``minmin_step``'s
  ``loss_fn``) and :meth:`Task.retrain_loss`, the one ``cafeslim train`` uses;
* :meth:`Task.meter` — a :class:`Meter` that accumulates the task's metric over batches: the
  search's fitness on D_val, ``train``'s holdout and test numbers, ``eval``'s rows;
* :attr:`Task.metric`, :attr:`Task.metrics`, :attr:`Task.labels` — the metric names
  (``top1``, ``miou``, ``label_acc``) and how reports label them;
* :meth:`Task.distill` and :meth:`Task.check_recipe` — knowledge distillation, and what does
  not apply (mixup and CutMix are classification's);
* :meth:`Task.classes` and :meth:`Task.source` — the built-in demo data and the folder reader
  with its validation, as a :class:`DataSource` that :func:`cafeslim.data.build_data` splits
  into D_tr, D_val, the test split and the calibration batches.

Tasks are registered by name (:func:`register_task`); :func:`cafeslim.tasks.get_task` returns
one. Nothing outside :mod:`cafeslim.tasks` asks which task it has: it asks the task.

Example:
    >>> from cafeslim.tasks import get_task
    >>> t = get_task("classification")
    >>> m = t.meter(); m.update(torch.eye(3), torch.arange(3)); m.compute()["top1"]
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Type

import numpy as np
import torch

from ..errors import ConfigError

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def first_tensor(output: Any, key: str = "out") -> torch.Tensor:
    """The tensor to score out of a model's output.

    A tensor is itself; a tuple or list gives its first element (auxiliary outputs come
    after the main one); a dict gives ``output[key]`` when present, else its first value.

    Raises:
        ConfigError: the output holds no tensor.

    Example:
        >>> first_tensor({"out": torch.ones(1), "aux": torch.zeros(1)}).item()
        1.0
    """
    while not isinstance(output, torch.Tensor):
        if isinstance(output, Mapping):
            if not output:
                break
            output = output[key] if key in output else next(iter(output.values()))
        elif isinstance(output, (tuple, list)) and output:
            output = output[0]
        else:
            break
    if not isinstance(output, torch.Tensor):
        raise ConfigError(f"the model's output ({type(output).__name__}) holds no tensor to score")
    return output


class Meter:
    """Accumulates a task's metric over batches.

    ``update(output, target)`` once per batch (``output`` as the model returns it: the meter
    selects the scored tensor), then ``compute()`` gives every metric of the task, the primary
    one first. ``count`` is the number of samples (images) seen.

    Example:
        >>> m = get_task("classification").meter()                    # doctest: +SKIP
        >>> for x, y in batches: m.update(model(x), y)                 # doctest: +SKIP
        >>> m.compute()                                                # doctest: +SKIP
        {'top1': 0.98, 'top5': 1.0}
    """

    def __init__(self, select: Callable[[Any], torch.Tensor]):
        self.select = select
        self.count = 0

    def update(self, output: Any, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> Dict[str, float]:
        raise NotImplementedError


@dataclass
class DataSource:
    """A task's data before the split: what :func:`cafeslim.data.build_data` loads from.

    Attributes:
        train: the training samples with the training augmentation (D_tr is drawn from them).
        eval: the same samples with the evaluation transform (D_val is drawn from them).
        pool: indices of ``train``/``eval`` that D_tr and D_val are split from.
        test: the held-out test split (the demo's fixed one, or ``val/``); None without one.
        classes: class names (segmentation: with the background; multi-label: label names).
        workers: data-loading processes (0 for in-memory data).
        source: ``demo`` or the folder, as reports show it.
    """

    train: Any
    eval: Any
    pool: np.ndarray
    test: Optional[Any]
    classes: Tuple[str, ...]
    workers: int
    source: str


class Task:
    """What a network predicts, and how cafeslim trains, scores and reads data for it.

    Subclasses set the class attributes and implement the methods that raise
    :class:`NotImplementedError`; :func:`register_task` makes them available by name.

    Attributes:
        name: the ``--task`` choice.
        metric: the primary metric: the search's fitness, the holdout's selection and the
            number ``train`` and ``eval`` quote.
        metrics: every metric the meter computes, the primary one first.
        labels: metric -> how reports label it (``top1`` -> ``top-1``).
        builtin: the built-in data sets the task has (``--data demo``).
        demo_preset: settings over :data:`cafeslim.config.DEMO_PRESET` for its demo.
        layout: the folder layout, as an error message states it.
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    metrics: ClassVar[Tuple[str, ...]] = ()
    labels: ClassVar[Mapping[str, str]] = {}
    builtin: ClassVar[Tuple[str, ...]] = ("demo",)
    demo_preset: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    layout: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- outputs and losses -----------------------------------------------------------

    def select(self, output: Any) -> torch.Tensor:
        """The tensor that is scored (see :func:`first_tensor`)."""
        return first_tensor(output)

    def num_outputs(self, output: Any) -> int:
        """Classes (or labels) a model predicts, read off one output (channel axis 1).

        Example:
            >>> get_task("classification").num_outputs(torch.zeros(1, 7))   # doctest: +SKIP
            7
        """
        return int(self.select(output).shape[1])

    def loss_fn(self, label_smoothing: float = 0.0) -> LossFn:
        """The supernet's training loss, ``loss(outputs, targets) -> scalar``."""
        raise NotImplementedError

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """The task's plain loss (no label smoothing): usable as ``minmin_step``'s ``loss_fn``.

        Example:
            >>> get_task("multilabel").loss(torch.zeros(2, 3), torch.ones(2, 3))  # doctest: +SKIP
            tensor(0.6931)
        """
        return self.loss_fn(0.0)(output, targets)

    def retrain_loss(self, output: Any, targets: torch.Tensor, soft: Optional[torch.Tensor],
                     label_smoothing: float) -> torch.Tensor:
        """``cafeslim train``'s loss; ``soft`` are mixed targets (classification only)."""
        return self.loss_fn(label_smoothing)(output, targets)

    def distill(self, student: Any, teacher: Any, temperature: float) -> torch.Tensor:
        """The distillation term between the student's and the teacher's outputs."""
        raise ConfigError(f"knowledge distillation is not available for {self.name}; "
                          "pass --teacher none")

    def check_recipe(self, cfg: Any) -> None:
        """Refuse training settings that do not apply to the task (ConfigError).

        Mixup and CutMix mix class labels into soft targets: they are classification's.
        """
        if getattr(cfg, "mixup", 0) > 0 or getattr(cfg, "cutmix", 0) > 0:
            raise ConfigError(f"--mixup and --cutmix mix class labels: they apply to "
                              f"classification, not {self.name}")

    # -- metrics ------------------------------------------------------------------------

    def meter(self) -> Meter:
        """A fresh :class:`Meter` of the task's metrics."""
        raise NotImplementedError

    def label(self, metric: Optional[str] = None) -> str:
        """How reports name a metric (the primary one by default).

        Example:
            >>> get_task("segmentation").label()                          # doctest: +SKIP
            'mIoU'
        """
        key = metric or self.metric
        return str(self.labels.get(key, key))

    def describe(self, values: Mapping[str, Optional[float]]) -> str:
        """``top-1 98.61%, top-5 100.00%``: the task's metrics as one phrase (– when missing).

        Example:
            >>> get_task("classification").describe({"top1": 0.5, "top5": None})  # doctest: +SKIP
            'top-1 50.00%, top-5 –'
        """
        return ", ".join(f"{self.label(k)} {pct(values.get(k))}" for k in self.metrics)

    @property
    def score_note(self) -> str:
        """What a D_val score is, as reports say it."""
        return (f"D_val score: {self.label()} on the images the search selected on — a "
                "selection score that ranks widths, not the model's accuracy. The accuracy to "
                f"quote is the test {self.label()} of `cafeslim train RUN` + "
                "`cafeslim eval RUN/train`.")

    # -- data ---------------------------------------------------------------------------

    def classes(self, data: str) -> Tuple[str, ...]:
        """Class (or label) names of ``--data`` without building loaders (sizes the head)."""
        raise NotImplementedError

    def source(self, data: str, info: Any, cfg: Any, bad: Any) -> DataSource:
        """The task's samples of ``--data`` (the demo or a folder), validated.

        Args:
            data: ``demo`` or a folder.
            info: the created model (input size, mean/std).
            cfg: the training settings (``img_size``, ``workers``, augmentation fields).
            bad: the shared counter of unreadable images.
        """
        raise NotImplementedError

    def check_builtin(self, data: str) -> None:
        """ConfigError for another task's built-in data (``demo-hard`` is classification's)."""
        from ..config import BUILTIN_IMG_SIZE

        if data in BUILTIN_IMG_SIZE and data not in self.builtin:
            raise ConfigError(f"--data {data} is a built-in data set of another task; "
                              f"{self.name} has {', '.join(self.builtin)}")


def pct(value: Optional[float]) -> str:
    """A fraction as a percentage with two decimals (– for None or NaN).

    Example:
        >>> pct(0.98611), pct(None)
        ('98.61%', '–')
    """
    if value is None or value != value:
        return "–"
    return f"{100 * float(value):.2f}%"


TASKS: Dict[str, Task] = {}
"""Registered tasks by name (filled as their modules are imported; see :func:`get_task`)."""


def register_task(cls: Type[Task]) -> Type[Task]:
    """Class decorator: register one instance of a :class:`Task` under its ``name``.

    Example:
        >>> @register_task
        ... class Depth(Task):                                         # doctest: +SKIP
        ...     name = "depth"
    """
    if not cls.name or not cls.metric or cls.metric not in cls.metrics:
        raise TypeError(f"{cls.__name__} needs a name, and a metric listed in its metrics")
    TASKS[cls.name] = cls()
    return cls


def outputs_like(output: Any, selected: torch.Tensor, leaves: Sequence[Any]) -> Any:
    """The entry of a flat list of outputs (ONNX's) that corresponds to ``selected``.

    A structured PyTorch output flattens to its tensors in order; the scored tensor's position
    among them is the position of the matching output of the exported file.

    Example:
        >>> out = {"out": torch.ones(1), "aux": torch.zeros(1)}
        >>> outputs_like(out, out["out"], ["A", "B"])
        'A'
    """
    from torch.utils import _pytree as pytree

    flat = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    for i, t in enumerate(flat):
        if t is selected:
            return leaves[i]
    return leaves[0]


__all__ = ["DataSource", "LossFn", "Meter", "TASKS", "Task", "first_tensor", "outputs_like", "pct",
           "register_task"]
