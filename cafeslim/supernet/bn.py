"""BatchNorm recalibration: running statistics of one sub-network, measured on training batches.

Running statistics accumulated while training a supernet belong to no sub-network (the supernet
never writes them from a sub-network, see :mod:`cafeslim.supernet.supernet`), so every
evaluation of a sub-network — search fitness, export — first recalibrates them (DESIGN.md,
"Supernet and min-min training"; AutoSlim and CafeNet do the same): reset, cumulative moving
average (``momentum=None``), N training batches forwarded under ``no_grad`` with BatchNorm in
train mode and every other module in eval mode (dropout and drop-path off, so the statistics
are those of the deterministic network that will be evaluated).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..export.slim import patched_attributes
from .supernet import Supernet, bn_modules, unwrap


def _images(batch: Any) -> torch.Tensor:
    """The input tensor of a batch: a tensor, the first item of a tuple/list, or ``batch['image']``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("image", "images", "input", "x"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise DataError(f"cannot find the images in a batch of type {type(batch).__name__}")


@contextmanager
def _bn_only_train(model: nn.Module) -> Iterator[None]:
    """BatchNorm modules in train mode, everything else in eval mode; modes restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for _, m in bn_modules(model):
            m.train()
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def _all_reduce_mean(stats: Dict[str, torch.Tensor]) -> None:
    """Average floating statistics across ranks in one collective (in place)."""
    import torch.distributed as dist

    from .distributed import collective_world

    if collective_world() < 2:  # one process, or a rank scoring on its own (parallel search)
        return
    keys = [k for k, v in stats.items() if v.is_floating_point()]
    if not keys:
        return
    flat = torch.cat([stats[k].reshape(-1).float() for k in keys])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for k in keys:
        n = stats[k].numel()
        stats[k].copy_(flat[offset:offset + n].view_as(stats[k]))
        offset += n


def recalibrate_bn(
    supernet: nn.Module,
    spec: Optional[Mapping[int, Sequence[int]]],
    batches: Iterable[Any],
    max_batches: int = 20,
    *,
    channels_last: bool = False,
) -> Dict[str, torch.Tensor]:
    """Measure a sub-network's BatchNorm running statistics and store them in the supernet.

    Statistics start from zero mean / unit variance and are a cumulative average over
    ``max_batches`` batches (``momentum=None``). The supernet's weights and its full buffers are
    not touched; the result is stored for ``spec`` (:meth:`Supernet.set_bn_stats`), so that an
    eval-mode forward with that spec and :meth:`Supernet.export_subnet` use it. Under
    ``torch.distributed`` every rank must call this with the same spec and the same number of
    batches (each its own shard); the statistics are averaged across ranks.

    Args:
        supernet: a :class:`Supernet` (or a DDP wrapper of one).
        spec: the sub-network, or None for the full model.
        batches: an iterable of batches: tensors, ``(images, targets)`` tuples or dicts with an
            ``image`` entry. Images are moved to the supernet's device.
        max_batches: how many batches to use (fewer if the iterable ends first).
        channels_last: convert images to ``torch.channels_last`` first.

    Returns:
        The stored statistics, ``{buffer qualname: tensor}``.

    Raises:
        DataError: the iterable yields no batch.

    Example:
        >>> stats = recalibrate_bn(net, spec, train_loader, max_batches=20)
        >>> net.set_subnet(spec)
        >>> accuracy = evaluate(net.eval(), val_loader)
    """
    if max_batches < 1:
        raise ConfigError(f"max_batches must be at least 1, got {max_batches}")
    net: Supernet = unwrap(supernet)
    model = net.model
    key = net.prepare(spec)
    bns = bn_modules(model)
    device = net._device()
    fresh: Dict[str, torch.Tensor] = {}
    attrs: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in (net._prepare(key).attrs if key else {}).items()}
    stat_names = {f"{n}.{s}" if n else s for n, _ in bns for s in ("running_mean", "running_var")}
    with torch.no_grad():
        sliced = net.sliced(key)
        params = {k: v for k, v in sliced.items() if k not in stat_names}
        for name, m in bns:
            prefix = f"{name}." if name else ""
            # The sub-network's width of this BN is that of its sliced statistics.
            c = sliced.get(prefix + "running_mean", m.running_mean).shape[0]
            fresh[prefix + "running_mean"] = torch.zeros(c, dtype=m.running_mean.dtype, device=device)
            fresh[prefix + "running_var"] = torch.ones(c, dtype=m.running_var.dtype, device=device)
            if getattr(m, "num_batches_tracked", None) is not None:
                fresh[prefix + "num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=device)
            attrs[name] = {**attrs.get(name, {}), "momentum": None}
    if not bns:
        net.set_bn_stats(spec, {})
        return {}
    state = {**params, **fresh}
    n = 0
    with torch.no_grad(), _bn_only_train(model), patched_attributes(model, attrs):
        for batch in batches:
            x = _images(batch).to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            # BatchNorm updates the running buffers in ``state`` in place (functional_call
            # swaps those very tensors in), with factor 1/num_batches_tracked: a plain average.
            torch.func.functional_call(model, state, (x,))
            n += 1
            if n >= max_batches:
                break  # before the iterator loads a batch that would not be used
    if n == 0:
        raise DataError("BatchNorm recalibration got no batch: the data loader is empty")
    _all_reduce_mean(fresh)
    net.set_bn_stats(spec, fresh)
    return net.bn_stats(spec)


def recalibrate_bn_many(
    supernet: nn.Module,
    specs: Sequence[Optional[Mapping[int, Sequence[int]]]],
    batches: Iterable[Any],
    max_batches: int = 20,
    *,
    channels_last: bool = False,
) -> List[Dict[str, torch.Tensor]]:
    """:func:`recalibrate_bn` for several specs; same-shape ones in one batched pass.

    Where :mod:`cafeslim.supernet.batched` applies (aligned candidates of one width, CUDA or
    ``batch_candidates="on"``, under the memory cap), the specs' statistics are measured in
    one vmapped forward per batch, reading ``batches`` once per chunk of specs instead of once
    per spec; otherwise each spec is recalibrated alone. The statistics are the same either
    way (``tests/supernet/test_batched.py``).

    Returns:
        The stored statistics of every spec, in order.

    Example:
        >>> stats = recalibrate_bn_many(net, fitness.candidate_specs(k), loader, max_batches=2)
    """
    if max_batches < 1:
        raise ConfigError(f"max_batches must be at least 1, got {max_batches}")
    import time

    from .batched import chunk_size, chunks, record_time

    net: Supernet = unwrap(supernet)
    specs = list(specs)
    keys = [net.prepare(s) for s in specs]
    images = _batch_size(batches)
    size = chunk_size(net, len(specs), images, "recal") if all(keys) else 1
    out: List[Dict[str, torch.Tensor]] = []
    t0, batched = time.perf_counter(), False
    for part in chunks(list(range(len(specs))), size):
        got = _recalibrate_batched(net, [specs[i] for i in part], batches, max_batches,
                                   channels_last) if len(part) > 1 else None
        batched = batched or got is not None
        if got is None:
            got = [recalibrate_bn(supernet, specs[i], batches, max_batches, channels_last=channels_last)
                   for i in part]
        out.extend(got)
    if len(specs) > 1:
        record_time(net, "recal", images, batched, (time.perf_counter() - t0) / len(specs))
    return out


def _batch_size(batches: Any) -> int:
    """Images per batch (for the batching cap) without consuming a one-shot iterator.

    A data loader's ``batch_size``, else the first kept batch of a replay (or of a list),
    else the source a replay reads from; 1 when nothing tells.
    """
    for _ in range(4):
        size = getattr(batches, "batch_size", None)
        if size:
            return int(size)
        kept = getattr(batches, "_kept", None) or (batches if isinstance(batches, (list, tuple)) else None)
        if kept:
            return int(_images(kept[0]).shape[0])
        batches = getattr(batches, "source", None)
        if batches is None:
            break
    return 1


def _bn_width(net: Supernet, key: Any, name: str, m: nn.Module) -> int:
    """Channels of BatchNorm ``name`` in the sub-network ``key`` (its sliced statistics' length)."""
    q = f"{name}.running_mean" if name else "running_mean"
    for axis, idx in (net._prepare(key).indices.get(q, ()) if key else ()):
        if axis == 0:
            return int(idx.numel())
    return int(m.running_mean.shape[0])


def _recalibrate_batched(net: Supernet, specs: Sequence[Any], batches: Iterable[Any], max_batches: int,
                         channels_last: bool) -> Optional[List[Dict[str, torch.Tensor]]]:
    """Recalibrate same-shape specs in one vmapped pass; None when batching does not apply."""
    from .batched import compatible, guarded, stacked_state, vmapped_call

    keys = [net.prepare(s) for s in specs]
    bns = bn_modules(net.model)
    if not bns or not compatible(net, keys):
        return None
    device, k = net._device(), len(keys)
    stat_names = {f"{n}.{s}" if n else s for n, _ in bns for s in ("running_mean", "running_var")}
    attrs: Dict[str, Dict[str, Any]] = {n: dict(v) for n, v in net._prepare(keys[0]).attrs.items()}
    with torch.no_grad():
        state, dims = stacked_state(net, keys, skip=stat_names)
        counts: Dict[str, torch.Tensor] = {}
        for name, m in bns:
            prefix = f"{name}." if name else ""
            c = _bn_width(net, keys[0], name, m)
            state[prefix + "running_mean"] = torch.zeros(k, c, dtype=m.running_mean.dtype, device=device)
            state[prefix + "running_var"] = torch.ones(k, c, dtype=m.running_var.dtype, device=device)
            dims[prefix + "running_mean"] = dims[prefix + "running_var"] = 0
            if getattr(m, "num_batches_tracked", None) is not None:
                # One counter for all candidates: it counts forwards, which they share; kept
                # out of vmap, so that BatchNorm can read it as a Python number.
                counts[prefix + "num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=device)
            attrs[name] = {**attrs.get(name, {}), "momentum": None}

    def run() -> int:
        n = 0
        with torch.no_grad(), _bn_only_train(net.model):
            for batch in batches:
                x = _images(batch).to(device, non_blocking=True)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                vmapped_call(net.model, attrs, state, dims, x, shared=counts)
                n += 1
                if n >= max_batches:
                    break
        return n

    n = guarded(net, run)
    if n is None:
        return None
    if n == 0:
        raise DataError("BatchNorm recalibration got no batch: the data loader is empty")
    out = []
    for i, spec in enumerate(specs):
        fresh = {q: state[q][i].clone() for q in stat_names}
        fresh.update({q: v.clone() for q, v in counts.items()})
        _all_reduce_mean(fresh)
        net.set_bn_stats(spec, fresh)
        out.append(net.bn_stats(spec))
    return out
