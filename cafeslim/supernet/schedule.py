"""The optimisation recipe of supernet training: LR schedule, weight-decay groups, AMP.

Example:
    >>> f = WarmupCosine(warmup=10, total=110); f(0), f(9), f(110)
    (0.1, 1.0, 0.0)
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError


class WarmupCosine:
    """LR factor per step: linear warmup to 1, then cosine to 0 at ``total`` steps.

    A plain object (not a lambda) so that ``LambdaLR.state_dict()`` stores its numbers.

    Example:
        >>> f = WarmupCosine(warmup=10, total=110); f(0), f(9), f(110)
        (0.1, 1.0, 0.0)
    """

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = int(warmup), int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        t = min(max(step - self.warmup, 0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two SGD groups: decayed weights, and norms/biases (every tensor with < 2 dims) without.

    Example:
        >>> import torchvision
        >>> [len(g["params"]) > 0 for g in param_groups(torchvision.models.resnet18(), 1e-4)]
        [True, True]
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Steps the schedule covers: all epochs, or ``max_steps`` if smaller."""
    total = cfg.epochs_for(steps_per_epoch) * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


def amp_setup(cfg: TrainConfig, device: torch.device) -> tuple:
    """(autocast dtype or None, GradScaler or None) for ``cfg.amp`` on ``device``.

    Raises:
        ConfigError: fp16 without CUDA.
    """
    if cfg.amp == "off":
        return None, None
    if device.type != "cuda":
        if cfg.amp == "fp16":
            raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 or off on CPU")
        return torch.bfloat16, None  # CPU autocast supports bf16 only
    if cfg.amp == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


__all__ = ["WarmupCosine", "amp_setup", "param_groups", "total_steps"]
