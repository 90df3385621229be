"""The aligned candidates of one width vector as one batched computation.

The candidates ``S_c`` of a width vector (Eq. 5) keep the same widths and differ only in which
channels they keep, so their gathered tensors have identical shapes. They are stacked along a
new leading axis and the model runs once under ``torch.func.vmap`` over
``torch.func.functional_call`` (convolutions then become one grouped convolution, BatchNorm
one wider BatchNorm). The module attributes are those of :meth:`Supernet.call_setup`, so
BatchNorm behaves exactly as in the sequential path: in train mode (min-min selection) batch
statistics only, running statistics neither read nor written; in recalibration a cumulative
average into fresh per-candidate buffers; in eval mode each candidate's own statistics.

When batching applies (:func:`chunk_size`):

* ``Supernet.batch_candidates``: ``"off"``; ``"on"``; ``"auto"`` (default): batched on CUDA,
  sequential on a CPU — on the 2-core CPU this was developed on, a vmapped forward of 3
  ResNet-50 candidates at 128 px took 1.2-1.75x the time of three sequential ones (oneDNN's
  grouped convolutions are no faster than separate ones) and batched min-min and search were
  slower too, see ``docs/performance.md``; ``"probe"``: on a CPU, time both paths on the run's
  first calls and keep the faster (:func:`_probe_says_batched`; small inputs, where per-op
  overheads dominate, can gain);
* the candidates must share their gathered tensor names and module attributes (always true
  for aligned candidates; checked anyway);
* memory cap: at most ``Supernet.max_batched_images`` images (candidates x batch) per
  vmapped call; more candidates are split into chunks, and a cap below two candidates means
  the sequential path;
* a model whose forward vmap cannot run (data-dependent Python control flow on tensor
  values, ``.item()``, an op without a batching rule) raises on the first try; the reason is
  kept in ``Supernet.batching_error`` and that supernet runs sequentially from then on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..export.slim import patched_attributes
from .gather import GatherOp, gather, owned_tensor

BATCH_MODES = ("auto", "on", "off", "probe")


PROBES = 3
"""Timed uses of each path per kind of work before ``probe`` settles on a CPU."""


def chunk_size(net: Any, n_candidates: int, images: int, kind: str = "select") -> int:
    """How many candidates to run per vmapped call (1: run them one by one).

    Args:
        net: the :class:`~cafeslim.supernet.Supernet`.
        n_candidates: candidates of the width.
        images: images per candidate and call (the memory cap counts candidates x images).
        kind: the work (``select``, ``recal``, ``score``): ``probe`` times each kind apart.

    Example:
        >>> chunk_size(net, 3, 64)        # batch_candidates="off"       # doctest: +SKIP
        1
    """
    mode = getattr(net, "batch_candidates", "auto")
    if n_candidates < 2 or mode == "off" or getattr(net, "batching_error", None):
        return 1
    cap = int(getattr(net, "max_batched_images", 0)) // max(int(images), 1)
    size = max(1, min(n_candidates, cap))
    if size > 1 and mode in ("auto", "probe") and net._device().type != "cuda":
        if mode == "auto" or not _probe_says_batched(net, kind, images):
            return 1
    return size


def _probe_says_batched(net: Any, kind: str, images: int) -> bool:
    """CPU ``probe``: alternate the two paths for the first uses, then keep the faster one.

    Whether batching pays on a CPU depends on the model and the sizes (per-op overheads
    against oneDNN's grouped convolutions), so it is measured, per kind of work and batch
    size, on the run's own calls. Both paths give the same numbers; a wrong pick costs time.
    """
    times = net.__dict__.setdefault("_batching_times", {}).setdefault((kind, int(images)), {True: [], False: []})
    if len(times[False]) < PROBES or len(times[True]) < PROBES:
        return len(times[True]) < len(times[False])  # sequential first, then alternate
    return float(sorted(times[True])[PROBES // 2]) < float(sorted(times[False])[PROBES // 2])


def record_time(net: Any, kind: str, images: int, batched: bool, seconds_per_candidate: float) -> None:
    """Report the time of one use of a path to the CPU ``probe`` (ignored once settled)."""
    times = net.__dict__.setdefault("_batching_times", {}).setdefault((kind, int(images)), {True: [], False: []})
    if len(times[batched]) < PROBES:
        times[batched].append(float(seconds_per_candidate))


@contextmanager
def decided(net: Any) -> Iterator[None]:
    """Batch every step of a computation whose batching was decided as a whole (a width's
    recalibration and D_val scoring): ``probe`` times the whole, not its parts."""
    mode, net.batch_candidates = net.batch_candidates, "on"
    try:
        yield
    finally:
        net.batch_candidates = mode


def chunks(items: Sequence[Any], size: int) -> List[Sequence[Any]]:
    """``items`` in consecutive pieces of at most ``size``."""
    size = max(int(size), 1)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _same_plan(a: Sequence[GatherOp], b: Sequence[GatherOp]) -> bool:
    if len(a) != len(b):
        return False
    for p, q in zip(a, b):
        if (p.axis, p.start, p.length, p.index is None) != (q.axis, q.start, q.length, q.index is None):
            return False
        if p.index is not None and not (p.index.shape == q.index.shape and torch.equal(p.index, q.index)):
            return False
    return True


def compatible(net: Any, keys: Sequence[Any]) -> bool:
    """True when the specs' gathered tensors and module attributes match (same shapes)."""
    preps = [net._prepare(k) for k in keys]
    first = preps[0]
    for p in preps[1:]:
        try:
            if p.ops.keys() != first.ops.keys() or p.attrs != first.attrs:
                return False
        except RuntimeError:  # an attribute that is a tensor: compare by running one by one
            return False
    return True


def stacked_state(net: Any, keys: Sequence[Any], skip: Sequence[str] = ()
                  ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Optional[int]]]:
    """Gathered tensors of every spec, stacked on a new axis 0, and their vmap ``in_dims``.

    A tensor gathered alike by every spec (its groups did not move) is passed once,
    unstacked (``in_dims`` None): no copy, and vmap treats it as shared.
    """
    preps = [net._prepare(k) for k in keys]
    skip = set(skip)
    state: Dict[str, torch.Tensor] = {}
    dims: Dict[str, Optional[int]] = {}
    for qualname, (owner, name, ops) in preps[0].ops.items():
        if qualname in skip:
            continue
        t = owned_tensor(owner, name)
        plans = [p.ops[qualname][2] for p in preps]
        if all(_same_plan(plans[0], p) for p in plans[1:]):
            state[qualname], dims[qualname] = gather(t, ops), None
        else:
            state[qualname], dims[qualname] = torch.stack([gather(t, p) for p in plans]), 0
    return state, dims


def vmapped_call(model: nn.Module, attrs: Mapping[str, Mapping[str, Any]], state: Dict[str, torch.Tensor],
                 dims: Dict[str, Optional[int]], x: torch.Tensor,
                 shared: Optional[Mapping[str, torch.Tensor]] = None) -> Any:
    """``functional_call(model, state_i, (x,))`` for every candidate ``i`` in one vmapped call.

    Args:
        model: the supernet's model.
        attrs: module attributes of the candidates (identical for all of them).
        state: stacked (``dims[q] == 0``) or shared (``None``) tensors.
        dims: vmap ``in_dims`` per entry of ``state``.
        x: the input, the same for every candidate.
        shared: further tensors used as they are (not batched), e.g. BatchNorm's
            ``num_batches_tracked``, which counts calls and is the same for every candidate.

    Returns:
        The model's output with a leading candidate axis (on every tensor of a tuple/dict).
    """
    extra = dict(shared or {})

    def one(s: Dict[str, torch.Tensor]) -> Any:
        return torch.func.functional_call(model, {**s, **extra}, (x,))

    with patched_attributes(model, attrs):
        return torch.func.vmap(one, in_dims=(dims,), randomness="error")(state)


def candidate_outputs(net: Any, keys: Sequence[Any], x: torch.Tensor,
                      stats: Optional[Sequence[Mapping[str, torch.Tensor]]] = None) -> Optional[List[Any]]:
    """Outputs of the specs ``keys`` on ``x`` in the supernet's current mode, or None.

    None means the batched path did not apply (see the module docstring); the caller then
    runs the candidates one by one. In eval mode, ``stats`` are the candidates' recalibrated
    BatchNorm statistics (one mapping each, as :meth:`Supernet.bn_stats` returns them).

    Example:
        >>> outs = candidate_outputs(net, [net.prepare(s) for s in specs], x)  # doctest: +SKIP
        >>> len(outs) == len(specs)                                           # doctest: +SKIP
        True
    """
    keys = list(keys)
    if not keys or not all(keys) or not compatible(net, keys):
        return None
    if stats is not None and (len(stats) != len(keys) or any(s is None for s in stats)):
        return None
    attrs, skip = net.call_setup(keys[0], stats[0] if stats else None)
    state, dims = stacked_state(net, keys, skip)
    if stats:
        for q in stats[0]:
            state[q] = torch.stack([s[q].to(x.device) for s in stats])
            dims[q] = 0
    out = guarded(net, lambda: vmapped_call(net.model, attrs, state, dims, x))
    if out is None:
        return None
    return [torch.utils._pytree.tree_map(lambda t, i=i: t[i], out) for i in range(len(keys))]


def guarded(net: Any, fn: Callable[[], Any]) -> Any:
    """Run a batched computation; on a vmap failure remember why and return None."""
    try:
        return fn()
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
        # vmap raises these for ops without batching rules and for data-dependent control
        # flow. The sequential path computes the same numbers, so falling back is safe; it is
        # remembered so that the failure costs one try, not one per call.
        net.batching_error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return None


__all__ = ["BATCH_MODES", "candidate_outputs", "chunk_size", "chunks", "compatible", "decided", "guarded",
           "record_time", "stacked_state", "vmapped_call"]
