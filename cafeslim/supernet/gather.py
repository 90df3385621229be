"""Gathering a parameter's active channels for one sub-network, as cheaply as the layout allows.

A spec's kept indices on each axis are turned once into a plan (:func:`gather_ops`): a
zero-copy ``narrow`` for a contiguous run, a ``cat`` of a few runs, or ``index_select``; the
supernet then applies it on every forward (:func:`gather`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass
class GatherOp:
    """One axis of a gather: a zero-copy ``narrow`` for a contiguous run, else ``index_select``
    (or, without autograd, a ``cat`` of the few runs: see :func:`gather`)."""

    axis: int
    start: int = 0
    length: int = 0
    index: Optional[torch.Tensor] = None
    runs: Tuple[Tuple[int, int], ...] = ()



def gather_ops(axes: Sequence[Tuple[int, torch.Tensor]], device: torch.device) -> List[GatherOp]:
    out = []
    for axis, idx in axes:
        a = idx.detach().cpu().numpy()
        if a.size and a[-1] - a[0] + 1 == a.size:
            # Sorted and unique (gather_indices' contract), so this is a contiguous run: a view.
            # Candidate 0 (the fixed pattern) is all runs, and a view costs no kernel at all,
            # which matters on a loaded CPU where every parallel op waits for its threads.
            out.append(GatherOp(axis, int(a[0]), int(a.size)))
        else:
            breaks = np.flatnonzero(np.diff(a) != 1) + 1
            starts = np.concatenate([[0], breaks])
            ends = np.concatenate([breaks, [a.size]])
            runs = tuple((int(a[s]), int(e - s)) for s, e in zip(starts, ends)) if len(starts) <= _MAX_RUNS else ()
            out.append(GatherOp(axis, index=idx.to(device), runs=runs))
    return out


_MAX_RUNS = 8


def gather(t: torch.Tensor, ops: Sequence[GatherOp]) -> torch.Tensor:
    grad = torch.is_grad_enabled() and t.requires_grad
    for op in ops:
        if op.index is None:
            if op.length != t.shape[op.axis]:
                t = t.narrow(op.axis, op.start, op.length)
        elif op.runs and op.axis > 0 and not grad:
            # index_select on an inner axis takes a slow strided path on CPU (2-3x slower than
            # copying a locally free pattern's few runs). Only without autograd: the backward
            # of each narrow would allocate a full-size zero gradient.
            t = torch.cat([t.narrow(op.axis, s, n) for s, n in op.runs], op.axis)
        else:
            t = t.index_select(op.axis, op.index)
    return t


def owned_tensor(owner: torch.nn.Module, name: str) -> torch.Tensor:
    """The full-width parameter, buffer or plain tensor attribute ``name`` of ``owner``."""
    t = owner._parameters.get(name)
    if t is None:
        t = owner._buffers.get(name)
    return getattr(owner, name) if t is None else t
