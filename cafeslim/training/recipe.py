"""The training recipe: optimizer, per-step schedule, mixup/CutMix and the weight EMA.

The loss is the task's (:meth:`cafeslim.tasks.Task.retrain_loss`; classification's
:func:`classification_loss` is re-exported here).

Every piece is deterministic given (seed, step), so that an interrupted and resumed training
is bit-identical to an uninterrupted one on CPU: the schedule is a plain object whose numbers
``LambdaLR.state_dict()`` stores, the mixing of a batch draws from a generator seeded by
(seed, step) alone, and the EMA's state travels in the checkpoint.

Example:
    >>> f = WarmupSchedule("step", warmup=0, total=100, steps_per_epoch=10, decay_epochs=5)
    >>> f(0), f(49), f(50)
    (1.0, 1.0, 0.1)
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..config import RetrainConfig
from ..data.loaders import mix_seed
from ..supernet.schedule import param_groups
from ..tasks.classification import classification_loss  # noqa: F401 - the recipe's loss, re-exported


class WarmupSchedule:
    """LR factor per step: linear warmup to 1, then ``cosine`` to 0 or ``step`` decay.

    Example:
        >>> WarmupSchedule("cosine", warmup=10, total=110)(110)
        0.0
    """

    def __init__(self, kind: str, warmup: int, total: int, steps_per_epoch: int = 1,
                 decay_epochs: float = 30.0, decay_rate: float = 0.1):
        self.kind, self.warmup, self.total = str(kind), int(warmup), int(total)
        self.decay_steps = max(1, int(round(decay_epochs * steps_per_epoch)))
        self.decay_rate = float(decay_rate)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "step":
            return self.decay_rate ** (step // self.decay_steps)
        t = min(max(step - self.warmup, 0) / max(self.total - self.warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, cfg: RetrainConfig, world_size: int = 1) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over two groups: decayed weights, undecayed norms and biases.

    ``world_size``: processes under ``torchrun`` (the default rate follows the global batch).

    Example:
        >>> make_optimizer(nn.Linear(4, 2), RetrainConfig(opt="adamw")).__class__.__name__
        'AdamW'
    """
    groups = param_groups(model, cfg.decay())
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.peak_lr(world_size))
    return torch.optim.SGD(groups, lr=cfg.peak_lr(world_size), momentum=cfg.momentum,
                           nesterov=cfg.momentum > 0)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RetrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of ``cfg`` over ``cfg.epochs × steps_per_epoch`` steps.

    Example:
        >>> opt = make_optimizer(nn.Linear(4, 2), RetrainConfig())
        >>> make_scheduler(opt, RetrainConfig(epochs=2), 10).get_last_lr()[0] < 0.1
        True
    """
    total = cfg.epochs * steps_per_epoch
    # At most a quarter of the run: a 1-epoch run with the default 1-epoch warmup would end at
    # its peak rate, never annealed (22.8% test top-1 on the demo).
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total // 4)
    fn = WarmupSchedule(cfg.sched, warmup, total, steps_per_epoch, cfg.decay_epochs,
                        cfg.decay_rate)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing spread over all classes (as timm's mixup does).

    Example:
        >>> soft_targets(torch.tensor([1]), 2, 0.2)
        tensor([[0.1000, 0.9000]])
    """
    off = smoothing / num_classes
    out = torch.full((targets.numel(), num_classes), off, device=targets.device)
    return out.scatter_(1, targets.view(-1, 1), 1.0 - smoothing + off)


def mix_batch(images: torch.Tensor, targets: torch.Tensor, num_classes: int,
              cfg: RetrainConfig, step: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Mixup or CutMix of a batch: ``(images, soft targets)``, or ``(images, None)`` when off.

    The mixing draws come from (seed, step) only, never from a global RNG.

    Example:
        >>> x, y = mix_batch(torch.zeros(4, 3, 8, 8), torch.arange(4), 4, RetrainConfig(mixup=0.2), 0)
        >>> y.shape
        torch.Size([4, 4])
    """
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return images, None
    rng = np.random.default_rng(mix_seed(cfg.seed, step, 0x313C))
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(*(2 * [cfg.cutmix if use_cutmix else cfg.mixup])))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    if use_cutmix:
        h, w = images.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually pasted
    else:
        images = lam * images + (1.0 - lam) * images[perm]
    soft = soft_targets(targets, num_classes, cfg.label_smoothing)
    return images, lam * soft + (1.0 - lam) * soft[perm]


def set_bn_momentum(model: nn.Module, momentum: Optional[float]) -> int:
    """Give every BatchNorm of ``model`` this momentum (None: leave them); how many changed.

    Example:
        >>> set_bn_momentum(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()), 0.1)
        1
    """
    if momentum is None:
        return 0
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = float(momentum)
    return len(norms)


def auto_bn_momentum(model: nn.Module, steps: int) -> Optional[float]:
    """The BatchNorm momentum a training of ``steps`` steps needs, or None to keep the model's.

    A momentum m averages the last ~1/m steps' batch statistics. torchvision's MobileNetV3
    has m = 0.01: after 300 steps its running statistics still mix in those of much earlier
    weights (segmentation demo: test mIoU 9.6% with them, 53.7% once recalibrated;
    docs/tasks.md). A momentum below PyTorch's default 0.1 with fewer than 10/m steps gets
    0.1; a longer training keeps the model's own.

    Example:
        >>> auto_bn_momentum(nn.BatchNorm2d(3, momentum=0.01), 300), auto_bn_momentum(nn.BatchNorm2d(3), 300)
        (0.1, None)
    """
    moms = [m.momentum for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
    if not moms or min(moms) >= 0.1 or min(moms) * steps >= 10:
        return None
    return 0.1


class ModelEma:
    """An exponential moving average of a model's parameters and buffers (timm's ModelEmaV2).

    Example:
        >>> ema = ModelEma(nn.Linear(2, 2), decay=0.9); ema.update(nn.Linear(2, 2))
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.decay = float(decay)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (buffers are copied)."""
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.dtype.is_floating_point:
                target.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> Any:
        return self.module.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.module.load_state_dict(state)


__all__ = ["ModelEma", "WarmupSchedule", "classification_loss", "make_optimizer",
           "make_scheduler", "mix_batch", "set_bn_momentum", "soft_targets", "auto_bn_momentum"]
