"""Pure layout arithmetic: where a channel axis goes through reshapes, indexing and slicing.

No torch here, only shapes: these functions decide whether an op keeps the channel axis
intact (and where it moves), merges it with trailing dims (a flatten), or splits it (heads,
a channel shuffle), in which case the caller fixes the groups involved.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from .state import Desc, Seg


def default_axis(shape: Sequence[int]) -> Optional[int]:
    """Channel axis assumed for a tensor nobody has described: NCHW or tokens (B, N, C)."""
    rank = len(shape)
    if rank in (2, 4, 5):
        return 1
    if rank == 3:
        return 2
    return None


def map_reshape(in_shape: Sequence[int], axis: int, out_shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """Where the channel axis lands after a reshape, and by which factor its inner size grows.

    Returns ``(new_axis, inner_factor)``, or None when the reshape splits the channels (into
    heads, say) or mixes them with leading dims, which no width change could follow.

    Example:
        >>> map_reshape((2, 8, 4, 4), 1, (2, 128))   # flatten(1): 16 entries per channel
        (1, 16)
    """
    pre = math.prod(in_shape[:axis])
    size = in_shape[axis]
    prefix = 1
    for j, d in enumerate(out_shape):
        if prefix == pre and (d != 1 or size == 1):
            if d == size:
                return j, 1
            if d > size and d % size == 0:
                factor = d // size
                acc = 1
                for k in range(axis + 1, len(in_shape)):
                    acc *= in_shape[k]
                    if acc == factor:
                        return j, factor
                    if acc > factor:
                        break
            return None
        prefix *= d
        if prefix > pre:
            return None
    return None


def map_permute(axis: int, dims: Sequence[int], rank: int) -> int:
    """New position of ``axis`` after ``permute(dims)``."""
    dims = [d % rank for d in dims]
    return dims.index(axis)


def map_index(in_shape: Sequence[int], axis: int, index) -> Tuple[str, object]:
    """Effect of ``x[index]`` on the channel axis.

    Returns one of ``("keep", new_axis)``, ``("slice", (new_axis, start, stop))`` for a
    contiguous channel slice, or ``("drop", reason)`` when the channel axis is indexed by an
    int, a step, or a tensor.
    """
    if not isinstance(index, tuple):
        index = (index,)
    rank = len(in_shape)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (rank - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (rank - sum(1 for i in expanded if i is not None)))
    in_dim = out_dim = 0
    for i in expanded:
        if isinstance(i, slice) and not all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
            if in_dim == axis:
                return "drop", "channel slice with computed bounds"
            in_dim += 1
            out_dim += 1
            continue
        if i is None:
            out_dim += 1
            continue
        if in_dim == axis:
            if isinstance(i, slice):
                if i.step not in (None, 1):
                    return "drop", "strided slice of the channel axis"
                size = in_shape[axis]
                start = 0 if i.start is None else (i.start % size if i.start < 0 else min(i.start, size))
                stop = size if i.stop is None else (i.stop % size if i.stop < 0 else min(i.stop, size))
                if not (isinstance(start, int) and isinstance(stop, int)):
                    return "drop", "channel slice with computed bounds"
                if (start, stop) == (0, size):
                    return "keep", out_dim
                return "slice", (out_dim, start, stop)
            return "drop", "channel axis indexed by an integer or a tensor"
        if isinstance(i, slice):
            out_dim += 1
        elif not isinstance(i, int):
            return "drop", "advanced (tensor) indexing"
        in_dim += 1
    return "keep", out_dim


def sub_desc(desc: Desc, start: int, stop: int, shape: Tuple[int, ...], axis: int) -> Desc:
    """The part of ``desc`` covering channels ``[start, stop)`` (segments may be partial)."""
    segs, pos = [], 0
    for s in desc.segs:
        a, b = max(start, pos), min(stop, pos + s.length)
        if a < b:
            segs.append(Seg(s.atom, s.start + a - pos, b - a))
        pos += s.length
    return Desc(tuple(shape), axis, tuple(segs), desc.inner)
