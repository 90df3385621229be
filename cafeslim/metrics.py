"""Top-1/top-5 accuracy over batches: the one count that ``train``, ``eval`` and reports share."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

import torch


@torch.no_grad()
def topk_accuracy(model: Any, batches: Iterable[Any], device: Optional[torch.device] = None
                  ) -> Tuple[float, float, int]:
    """Top-1, top-5 and the image count of ``model`` over ``(images, labels)`` batches.

    The model is called as it is (put it in eval mode first); a tuple or list output counts
    its first element (e.g. Inception's auxiliary logits come second). An empty iterable
    gives ``(nan, nan, 0)``.

    Example:
        >>> topk_accuracy(torch.nn.Flatten(), [(torch.eye(3), torch.arange(3))])
        (1.0, 1.0, 3)
    """
    top1 = top5 = n = 0
    for images, labels in batches:
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        out = model(images)
        out = out[0] if isinstance(out, (tuple, list)) else out
        best = out.topk(min(5, out.shape[1]), dim=1).indices
        hits = best == labels.view(-1, 1)
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(dim=1).sum())
        n += int(labels.numel())
    return (top1 / n, top5 / n, n) if n else (float("nan"), float("nan"), 0)
