"""Tasks: what a network predicts, and everything cafeslim does differently for it.

One :class:`~cafeslim.tasks.base.Task` per kind, registered by name:

* ``classification`` (:mod:`.classification`) — label-smoothed cross-entropy, top-1/top-5,
  ImageNet-layout folders and the digits demo; mixup, CutMix and distillation;
* ``segmentation`` (:mod:`.segmentation`) — per-pixel cross-entropy (``ignore_index`` 255),
  mean IoU, image + mask folders (Pascal VOC's layout too) and a demo of digits on a canvas
  (:mod:`.segmentation_data`);
* ``multilabel`` (:mod:`.multilabel`) — binary cross-entropy with logits, mean per-label
  accuracy, an image folder with a CSV of 0/1 labels (CelebA's attribute file too) and a
  demo of digit attributes (:mod:`.multilabel_data`).

The run's ``task`` (:class:`~cafeslim.config.RunSettings`, ``--task``) picks one; the supernet
training, the search's fitness, ``train``, ``eval`` and the reports ask it. Importing this
package does not import torch (the CLI's ``--help`` stays fast); :func:`get_task` does.

Example:
    >>> import torch
    >>> seg = get_task("segmentation")
    >>> seg.metric, seg.label()
    ('miou', 'mIoU')
    >>> round(float(seg.loss({"out": torch.zeros(1, 2, 4, 4)}, torch.zeros(1, 4, 4, dtype=torch.long))), 4)
    0.6931
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = ("classification", "segmentation", "multilabel")
_EXPORTS = {"base": ["DataSource", "Meter", "TASKS", "Task", "first_tensor", "register_task"]}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + ["get_task", "task_names"]


def task_names() -> tuple:
    """The names of the registered tasks (the built-in three first).

    Example:
        >>> task_names()[:3]
        ('classification', 'segmentation', 'multilabel')
    """
    from .base import TASKS

    _load()
    order = {name: i for i, name in enumerate(_MODULES)}
    return tuple(sorted(TASKS, key=lambda n: (order.get(n, len(order)), n)))


def _load() -> None:
    for name in _MODULES:  # each module registers its task on import
        importlib.import_module(f".{name}", __name__)


def get_task(task: Any = None) -> Any:
    """The :class:`~cafeslim.tasks.base.Task` of a name (None: ``classification``).

    A task object is returned as it is, so that functions may take either.

    Raises:
        ConfigError: no task of that name.

    Example:
        >>> get_task("multilabel").metric
        'label_acc'
    """
    from .base import TASKS, Task

    if isinstance(task, Task):
        return task
    _load()
    name = "classification" if task is None else str(task)
    if name not in TASKS:
        from ..errors import ConfigError

        raise ConfigError(f"invalid task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
