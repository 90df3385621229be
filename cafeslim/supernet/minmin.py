"""One min-min training step of the supernet (Eq. 11-12 of the paper, Appendix A.1).

Sample a width vector ``k`` uniformly over each group's bins; its candidate sub-networks
``S_c`` are the aligned locally free patterns of offset ``r`` (Eq. 5), optionally plus sampled
ones; forward each candidate without gradients (optionally on the first ``select_batch``
fraction of the batch), take the one with the smallest loss (Eq. 12), forward and backward only
that one (Eq. 11), optimizer step. With ``r = 0`` there is a single candidate and the step costs
exactly one forward and one backward. ``minmin_start = λ`` replaces the selection by a random
candidate during the first λ of training (the paper's ablation, Appendix A.13); ``sandwich``
also trains the largest and the smallest width every step, as AutoSlim does.

Distributed data parallel: every rank must draw the same widths and candidates, so the caller
seeds ``rng`` identically on all ranks (e.g. ``np.random.default_rng(seed)`` everywhere, never
``seed + rank``) and calls :func:`minmin_step` once per step on every rank. The candidate losses
are all-reduced before the argmin, so every rank back-propagates the same sub-network and the
gradients DDP averages belong to one set of weights. Every parameter reaches the loss through
``index_select``/``narrow`` (whose gradients are zero outside the kept slice), so DDP needs no
``find_unused_parameters``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..config import MinMinConfig
from ..graph.channel_graph import IndexSpec
from .supernet import Supernet, spec_key, unwrap

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
_SELECT_DTYPES = {None: None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                  "float16": torch.float16, "fp16": torch.float16}


@dataclass
class StepStats:
    """What one step did.

    Attributes:
        loss: training loss of the trained sub-network of the sampled width (full batch).
        widths: the sampled width vector, in bins per searchable group.
        chosen: index of the trained candidate in the step's (de-duplicated) candidate list;
            0 is the fixed pattern.
        n_candidates: number of distinct candidates of the width.
        candidate_losses: selection losses (all-reduced under DDP); empty when no selection
            ran (a single candidate, or a random pick while ``progress < minmin_start``).
        sandwich_losses: ``(largest, smallest)`` losses with ``sandwich``, else empty.
    """

    loss: float
    widths: Tuple[int, ...]
    chosen: int
    n_candidates: int
    candidate_losses: Tuple[float, ...] = ()
    sandwich_losses: Tuple[float, ...] = ()


def _dist_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def step_candidates(space: Any, k: Sequence[int], cfg: MinMinConfig, rng: np.random.Generator) -> List[IndexSpec]:
    """The distinct candidate sub-networks of width vector ``k`` (candidate 0: fixed pattern).

    Aligned candidates where a group has fewer choices clip to its last one, and sampled ones
    may repeat an aligned one; duplicates would only cost forwards, so they are dropped.

    Example:
        >>> step_candidates(space, space.sample(rng)[0], MinMinConfig(offset=0), rng)  # one spec
    """
    if cfg.candidates:
        specs = space.sample_candidates(k, cfg.candidates, rng, r=cfg.offset)
    else:
        specs = space.candidates(k, r=cfg.offset)
    seen, out = set(), []
    for s in specs:
        key = spec_key(space.graph, s)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _selection_losses(net: Supernet, candidates: Sequence[IndexSpec], images: torch.Tensor,
                      targets: torch.Tensor, loss_fn: LossFn, cfg: MinMinConfig,
                      autocast_dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Loss of every candidate on the selection sub-batch, averaged over ranks."""
    n = images.shape[0]
    if cfg.select_batch < 1.0:
        # Train-mode BatchNorm needs two samples per channel at 1x1 feature maps.
        n = min(n, max(2, int(round(cfg.select_batch * n))))
    x, y = images[:n], targets[:n]
    losses = []
    if cfg.select_dtype is not None:
        autocast_dtype = _SELECT_DTYPES[cfg.select_dtype]
    # inference_mode: no autograd bookkeeping at all (not even version counters) for forwards
    # whose only product is a number. The inner module is called directly, not a DDP wrapper,
    # so selection triggers no gradient-bucket preparation or buffer broadcast.
    with torch.inference_mode(), _autocast(images.device, autocast_dtype):
        for spec in candidates:
            net.set_subnet(spec)
            losses.append(loss_fn(net(x), y).float().reshape(()))
    out = torch.stack(losses)
    if _dist_world() > 1:
        import torch.distributed as dist

        out = out.clone()  # an inference tensor cannot be written in place by the collective
        # All-reduce results are identical on every rank, so every rank takes the same argmin.
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= _dist_world()
    return out


def _choose(net: Supernet, space: Any, k: Sequence[int], images: torch.Tensor, targets: torch.Tensor,
            loss_fn: LossFn, cfg: MinMinConfig, rng: np.random.Generator, progress: float,
            autocast_dtype: Optional[torch.dtype]) -> Tuple[IndexSpec, int, int, Tuple[float, ...]]:
    cands = step_candidates(space, k, cfg, rng)
    if len(cands) == 1:
        return cands[0], 0, 1, ()
    if progress < cfg.minmin_start:
        i = int(rng.integers(len(cands)))  # same draw on every rank: rng is seeded alike
        return cands[i], i, len(cands), ()
    losses = _selection_losses(net, cands, images, targets, loss_fn, cfg, autocast_dtype)
    values = tuple(float(v) for v in losses.tolist())
    i = int(np.argmin(values))
    return cands[i], i, len(cands), values


def _train_one(module: nn.Module, net: Supernet, spec: Optional[IndexSpec], images: torch.Tensor,
               targets: torch.Tensor, loss_fn: LossFn, scaler: Any, autocast_dtype: Optional[torch.dtype],
               sync: bool) -> float:
    net.set_subnet(spec)
    # Under DDP, all but the last backward of a step accumulate locally (no_sync); the last
    # one all-reduces the accumulated gradients of every sub-network trained this step.
    ctx = module.no_sync() if (not sync and hasattr(module, "no_sync")) else contextlib.nullcontext()
    with ctx:
        with _autocast(images.device, autocast_dtype):
            loss = loss_fn(module(images), targets)
        (scaler.scale(loss) if scaler is not None else loss).backward()
    return float(loss.detach())


def minmin_step(
    supernet: nn.Module,
    space: Any,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    cfg: MinMinConfig,
    rng: np.random.Generator,
    progress: float,
    *,
    scaler: Any = None,
    autocast_dtype: Optional[torch.dtype] = None,
    sampler: Any = None,
) -> StepStats:
    """One min-min step: sample a width, pick its lowest-loss candidate, train it, step.

    The supernet must be in train mode. The previously selected sub-network is selected again
    on return. Learning-rate schedules, gradient clipping and the like belong to the caller
    (clip between backward and step by wrapping ``optimizer``, or use the stats afterwards).

    Args:
        supernet: a :class:`Supernet`, or a ``DistributedDataParallel`` wrapping one (the
            training forward goes through the wrapper; selection uses the inner module).
        space: the :class:`cafeslim.bins.SearchSpace` widths and candidates come from.
        images, targets: the batch, already on the supernet's device.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` (mean over the batch).
        optimizer: zeroed at the start of the step, stepped at the end.
        cfg: :class:`MinMinConfig`.
        rng: drives widths and candidates; seed it identically on every DDP rank.
        progress: fraction of training done, in [0, 1] (for ``minmin_start``).
        scaler: a ``torch.amp.GradScaler`` for fp16 mixed precision, or None.
        autocast_dtype: ``torch.bfloat16``/``torch.float16`` to run forwards under autocast.
        sampler: a :class:`~cafeslim.bins.sampling.WidthSampler` that draws the width with
            ``rng`` (budget-aware sampling); None: uniform over each group's bins (Eq. 1).

    Returns:
        :class:`StepStats`.

    Example:
        >>> net = Supernet(model, graph, space).train()
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        >>> rng = np.random.default_rng(0)
        >>> stats = minmin_step(net, space, x, y, nn.functional.cross_entropy, opt,
        ...                     MinMinConfig(offset=1), rng, progress=0.0)
        >>> stats.n_candidates, stats.chosen
        (3, 1)
    """
    net = unwrap(supernet)
    previous = net.spec
    optimizer.zero_grad(set_to_none=True)
    try:
        k = tuple(int(v) for v in (sampler.sample(rng) if sampler is not None
                                   else space.sample(rng, 1)[0]))
        extra: List[float] = []
        if cfg.sandwich:
            # Largest width: the full model, one candidate. Smallest: min-min like any width.
            extra.append(_train_one(supernet, net, None, images, targets, loss_fn, scaler,
                                    autocast_dtype, sync=False))
            small, *_ = _choose(net, space, tuple(int(v) for v in space.min_bins), images, targets,
                                loss_fn, cfg, rng, progress, autocast_dtype)
            extra.append(_train_one(supernet, net, small, images, targets, loss_fn, scaler,
                                    autocast_dtype, sync=False))
        spec, chosen, n, losses = _choose(net, space, k, images, targets, loss_fn, cfg, rng,
                                          progress, autocast_dtype)
        loss = _train_one(supernet, net, spec, images, targets, loss_fn, scaler, autocast_dtype, sync=True)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    finally:
        net.set_subnet(previous)
    return StepStats(loss, k, chosen, n, losses, tuple(extra))
