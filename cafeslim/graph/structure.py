"""Rules for ops that move, join or cut the channel axis: cat, split, indexing, permutes."""

from __future__ import annotations

import torch.fx as fx

from .layout import map_index, map_permute, sub_desc
from .rules import Ctx, ParamRef, Plain, TensorValue, opaque, reshape_like, shape_of
from .state import Desc


def _out_shapes(node: fx.Node):
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (list, tuple)) and not hasattr(meta, "shape"):
        return [shape_of(m) for m in meta]
    return shape_of(meta)


def permute(ctx: Ctx, node: fx.Node, fname: str):
    x = ctx.value(node.args[0])
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if out_shape is None:
        return None
    rank = len(out_shape)
    rest = [ctx.value(a) for a in node.args[1:]] or list(node.kwargs.values())
    if fname == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        mapping = lambda a: map_permute(a, dims, rank)
    elif fname in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = rest[0] % rank, rest[1] % rank
        mapping = lambda a: d1 if a == d0 else d0 if a == d1 else a
    elif fname == "t":
        mapping = lambda a: 1 - a if rank == 2 else a
    else:  # movedim
        src, dst = rest[0] % rank, rest[1] % rank
        order = list(range(rank))
        order.insert(dst, order.pop(src))
        mapping = lambda a: order.index(a)
    if isinstance(x, Desc):
        return x.with_axis(out_shape, mapping(x.axis))
    if isinstance(x, ParamRef):
        dims = [None] * rank
        for i, d in enumerate(x.dims):
            dims[mapping(i)] = d
        return ParamRef(x.module, x.name, out_shape, tuple(dims))
    return Plain(out_shape)


def reshape(ctx: Ctx, node: fx.Node):
    x = ctx.value(node.args[0])
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if out_shape is None:
        return None
    literal = ()
    if node.target in ("view", "reshape") or getattr(node.target, "__name__", "") == "reshape":
        rest = list(node.args[1:]) or [node.kwargs.get("shape", node.kwargs.get("size"))]
        sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        if isinstance(sizes, (list, tuple)) and len(sizes) == len(out_shape):
            # a number > 1 written in the code cannot follow a slimmed channel count
            literal = tuple(j for j, v in enumerate(sizes) if type(v) is int and v > 1)
    return reshape_like(ctx, node, x, out_shape, literal)


def cat(ctx: Ctx, node: fx.Node, stack: bool = False):
    tensors = ctx.value(node.args[0] if node.args else node.kwargs.get("tensors"))
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", 0))
    out_shape = shape_of(node.meta.get("tensor_meta"))
    vals = [v for v in tensors if isinstance(v, TensorValue)]
    descs = [v for v in vals if isinstance(v, Desc)]
    if not descs or out_shape is None:
        return Plain(out_shape) if out_shape is not None else None
    rank_in = len(descs[0].shape)
    dim = dim % (rank_in + 1 if stack else rank_in)
    lead = descs[0]
    if not stack and dim == lead.axis and all(isinstance(v, Desc) and v.axis == dim for v in vals):
        inner = {v.inner for v in vals}
        if len(inner) != 1:
            ctx.fix_all(vals, "concatenation of channel tensors with different flatten factors")
            return ctx.fresh(node, node.meta.get("tensor_meta"), "concatenation with different flatten factors")
        segs = tuple(s for v in vals for s in v.segs)
        return Desc(out_shape, dim, segs, lead.inner)
    if not stack and dim == lead.axis:
        reason = "concatenated on the channel axis with an untracked tensor"
        ctx.fix_all(vals, reason)
        return ctx.fresh(node, node.meta.get("tensor_meta"), reason)
    for v in vals:
        if v is not lead:
            ctx.couple(lead, v, lead.axis, "joined with a tensor whose channels cannot be followed")
    axis = lead.axis + (1 if stack and dim <= lead.axis else 0)
    return lead.with_axis(out_shape, axis)


def split(ctx: Ctx, node: fx.Node, fname: str):
    """split/chunk/unbind/tensor_split; a channel cut makes the pieces separate groups."""
    x = ctx.value(node.args[0])
    shapes = _out_shapes(node)
    if not isinstance(shapes, list):
        return None
    if fname == "unbind":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    else:
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if not isinstance(x, Desc):
        return [ParamRef(x.module, x.name, s, x.dims) if isinstance(x, ParamRef) and s == x.shape else Plain(s)
                for s in shapes]
    dim = dim % len(x.shape)
    if dim != x.axis:
        if fname == "unbind":
            axis = x.axis - (1 if dim < x.axis else 0)
            return [x.with_axis(s, axis) for s in shapes]
        return [x.with_axis(s, x.axis) for s in shapes]
    if fname == "unbind":
        reason = "channel axis unbound into separate tensors"
        ctx.state.fix(x.segs, reason)
        return ctx.fresh(node, node.meta.get("tensor_meta"), reason)
    pieces, pos = [], 0
    for s in shapes:
        n = s[dim] // x.inner
        pieces.append(sub_desc(x, pos, pos + n, s, dim))
        pos += n
    for p in pieces:
        ctx.state.whole(p.segs)
    if fname == "chunk":
        # chunk sizes follow the tensor, so equal pieces stay equal if they share a pattern
        for p in pieces[1:]:
            if p.channels == pieces[0].channels:
                ctx.state.merge(pieces[0], p)
            else:
                ctx.state.fix(p.segs + pieces[0].segs, "uneven chunk of the channel axis")
    else:
        for p in pieces:
            ctx.state.fix(p.segs, "channel split with sizes written in forward code")
    return pieces


def getitem(ctx: Ctx, node: fx.Node):
    base = ctx.value(node.args[0])
    idx = node.args[1]
    if isinstance(base, (list, tuple)):
        return base[idx] if isinstance(idx, int) else base[idx] if isinstance(idx, slice) else None
    if isinstance(base, dict):
        return base.get(idx)
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if out_shape is None:
        return None
    if isinstance(idx, fx.Node) or (isinstance(idx, tuple) and any(isinstance(i, fx.Node) for i in idx)):
        if isinstance(base, Desc):
            return opaque(ctx, node, "indexing with a tensor")
        return Plain(out_shape)
    if isinstance(base, ParamRef):
        return reshape_like(ctx, node, base, out_shape) if _only_none_and_full(idx) else Plain(out_shape)
    if not isinstance(base, Desc):
        return Plain(out_shape)
    kind, info = map_index(base.shape, base.axis, idx)
    if kind == "keep":
        return base.with_axis(out_shape, info)
    if kind == "slice":
        axis, start, stop = info
        if base.inner != 1:
            ctx.state.fix(base.segs, "slice of a flattened channel axis")
            return ctx.fresh(node, node.meta.get("tensor_meta"), "slice of a flattened channel axis")
        piece = sub_desc(base, start, stop, out_shape, axis)
        ctx.state.whole(piece.segs)
        ctx.state.fix(piece.segs, "channel slice with bounds written in forward code")
        rest = [s for s in base.segs if s not in piece.segs]
        ctx.state.fix(tuple(rest), "channel slice with bounds written in forward code")
        return piece
    ctx.state.fix(base.segs, info)
    return ctx.fresh(node, node.meta.get("tensor_meta"), info)


def _only_none_and_full(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in items)


def expand(ctx: Ctx, node: fx.Node):
    x = ctx.value(node.args[0])
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if out_shape is None:
        return None
    if isinstance(x, Desc):
        axis = x.axis + len(out_shape) - len(x.shape)
        if out_shape[axis] != x.shape[x.axis]:
            ctx.state.fix(x.segs, "channel axis expanded")
            return ctx.fresh(node, node.meta.get("tensor_meta"), "channel axis expanded")
        return x.with_axis(out_shape, axis)
    if isinstance(x, ParamRef):
        lead = len(out_shape) - len(x.shape)
        dims = (None,) * lead + tuple(d if x.shape[i] == out_shape[i + lead] else None for i, d in enumerate(x.dims))
        return ParamRef(x.module, x.name, out_shape, dims)
    return Plain(out_shape)
