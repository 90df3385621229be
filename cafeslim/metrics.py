"""A model's metrics over batches: the one count that ``train``, ``eval`` and reports share.

What is counted is the task's (:meth:`cafeslim.tasks.Task.meter`): top-1/top-5 for
classification, mean IoU and pixel accuracy for segmentation, mean label accuracy and exact
match for multi-label. The search's fitness uses the same meters on D_val.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

import torch


@torch.no_grad()
def measure(model: Any, batches: Iterable[Any], task: Any = None,
            device: Optional[torch.device] = None) -> Tuple[Dict[str, float], int]:
    """Every metric of ``task`` for ``model`` over ``(images, targets)`` batches, and the count.

    The model is called as it is (put it in eval mode first); the task picks the scored tensor
    of its output (the first of a tuple, ``out`` of a dict). An empty iterable gives NaN values
    and a count of 0.

    Args:
        model: any callable on an image batch.
        batches: ``(images, targets)`` pairs.
        task: a :mod:`cafeslim.tasks` task or its name (None: classification).
        device: where images and targets go first (None: where they are).

    Example:
        >>> measure(torch.nn.Flatten(), [(torch.eye(3), torch.arange(3))])
        ({'top1': 1.0, 'top5': 1.0}, 3)
    """
    from .tasks import get_task

    meter = get_task(task).meter()
    for images, targets in batches:
        if device is not None:
            images, targets = images.to(device), targets.to(device)
        meter.update(model(images), targets)
    return meter.compute(), meter.count


def topk_accuracy(model: Any, batches: Iterable[Any], device: Optional[torch.device] = None
                  ) -> Tuple[float, float, int]:
    """Top-1, top-5 and the image count of a classifier (:func:`measure` for classification).

    A tuple or list output counts its first element (e.g. Inception's auxiliary logits come
    second). An empty iterable gives ``(nan, nan, 0)``.

    Example:
        >>> topk_accuracy(torch.nn.Flatten(), [(torch.eye(3), torch.arange(3))])
        (1.0, 1.0, 3)
    """
    values, n = measure(model, batches, "classification", device)
    return values["top1"], values["top5"], n
