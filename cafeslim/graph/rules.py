"""Channel rules per op: producers, consumers, pass-through, coupling, and fixing.

Each rule takes the pass context and an fx node and returns the node's value: a
:class:`~cafeslim.graph.state.Desc` for tensors with a known channel layout, a
:class:`ParamRef` for parameters not yet bound to a channel axis, a :class:`Plain` tensor of
unknown layout, or a python value / tuple of values. Anything not understood on the channel
axis fixes the groups it touches, with a reason: a fixed group is safe, a wrong one corrupts
the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch.fx as fx
from torch import nn

from ..ops.registry import OpKind
from .layout import default_axis, map_reshape
from .state import Desc, State


@dataclass(frozen=True)
class ParamRef:
    """A parameter/buffer (possibly reshaped) whose channel axis is not known yet.

    ``dims[i]`` is the parameter axis that the value's axis ``i`` comes from (None for an
    inserted size-1 axis).
    """

    module: str
    name: str
    shape: Tuple[int, ...]
    dims: Tuple[Optional[int], ...]
    literal: Tuple[int, ...] = ()  # axes whose size a reshape wrote as a number in the code


@dataclass(frozen=True)
class Plain:
    """A tensor of unknown channel layout (a constant, an attention map, ...)."""

    shape: Tuple[int, ...]


TensorValue = (Desc, ParamRef, Plain)


def shape_of(meta) -> Optional[Tuple[int, ...]]:
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


@dataclass
class Ctx:
    """What a rule sees: the pass state, the model's modules and the values so far."""

    state: State
    modules: Dict[str, nn.Module]
    env: Dict[fx.Node, Any] = field(default_factory=dict)
    kind: str = ""  # the OpKind of the node being run, set by its rule
    attrs: Dict[str, Any] = field(default_factory=dict)
    op_name: str = ""  # the record's name when not the node's target (``prelu``)
    module_path: str = ""
    gm: Optional[fx.GraphModule] = None
    output_reason: str = "model output"  # a traced part's outputs: the contract of their readers
    untraceable: Dict[str, str] = field(default_factory=dict)  # fallback leaves -> fx's error

    def gm_attr(self, target: str):
        """The object a ``get_attr`` node names (a parameter, buffer or constant)."""
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def value(self, arg):
        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return _like(arg, [self.value(a) for a in arg])
        if isinstance(arg, dict):  # a dict output (segmentation's {"out", "aux"}, FPN levels)
            return {k: self.value(v) for k, v in arg.items()}
        return arg

    # -- helpers used by many rules --------------------------------------------------------
    def fix_all(self, values, reason: str) -> None:
        for v in _flatten(values):
            if isinstance(v, Desc):
                self.state.fix(v.segs, reason)

    def fresh(self, node: fx.Node, meta, reason: str, key_suffix: str = ""):
        """Fresh fixed atoms for each tensor in an output we cannot follow."""
        if isinstance(meta, (list, tuple)) and not hasattr(meta, "shape"):
            return _like(meta, [self.fresh(node, m, reason, f"{key_suffix}.{i}") for i, m in enumerate(meta)])
        shape = shape_of(meta)
        if shape is None:
            return None
        axis = default_axis(shape)
        if axis is None or shape[axis] == 0:
            return Plain(shape)
        segs = self.state.new(node.name + key_suffix, shape[axis], "", reason)
        return Desc(shape, axis, segs)

    def producer(self, node: fx.Node, shape, axis: int, producer: str) -> Desc:
        return Desc(tuple(shape), axis, self.state.new(node.name, shape[axis], producer))

    def couple(self, desc: Desc, other, other_axis: Optional[int], reason: str) -> None:
        """``other`` must carry ``desc``'s channels on ``other_axis`` (or broadcast)."""
        if isinstance(other, Desc):
            if other.axis != other_axis:
                size = other.shape[other_axis] if other_axis is not None and other_axis < len(other.shape) else 1
                if size != 1:
                    self.state.fix(desc.segs + other.segs, reason)
            elif other.shape[other.axis] == 1 and desc.channels * desc.inner != 1:
                pass  # broadcast over channels: e.g. a spatial attention map
            else:
                self.state.merge(desc, other)
        elif isinstance(other, ParamRef):
            if other_axis is None or other_axis < 0 or other.shape[other_axis] == 1:
                return
            pdim = other.dims[other_axis]
            if other_axis in other.literal:
                self.state.fix(desc.segs, f"'{other.module or other.name}' reshapes a parameter to a channel "
                                          "count written in forward code")
            elif pdim is None or desc.inner != 1 or other.shape[other_axis] != desc.channels:
                self.state.fix(desc.segs, reason)
            else:
                self.state.add_member(desc, other.module, other.name, pdim, "param")
        elif isinstance(other, Plain):
            if other_axis is not None and 0 <= other_axis < len(other.shape) and other.shape[other_axis] != 1:
                self.state.fix(desc.segs, "combined with a tensor of unknown channel layout")


def _like(seq, items):
    """``items`` as a sequence of ``seq``'s type (a namedtuple takes its fields as arguments)."""
    return type(seq)(*items) if hasattr(seq, "_fields") else type(seq)(items)


def _flatten(values):
    if isinstance(values, (list, tuple)):
        for v in values:
            yield from _flatten(v)
    elif isinstance(values, dict):
        for v in values.values():
            yield from _flatten(v)
    else:
        yield values


def _tensor_args(ctx: Ctx, node: fx.Node) -> List:
    vals = [ctx.value(a) for a in node.args] + [ctx.value(v) for v in node.kwargs.values()]
    return [v for v in _flatten(vals) if isinstance(v, TensorValue)]


# ---------------------------------------------------------------------------------------
# Generic rules
# ---------------------------------------------------------------------------------------

def opaque(ctx: Ctx, node: fx.Node, what: str):
    """An op cafeslim does not understand: its inputs and outputs keep every channel."""
    reason = f"passes through {what}" + (f" in '{ctx.module_path}'" if ctx.module_path else "")
    ctx.fix_all(_tensor_args(ctx, node), reason)
    ctx.kind, ctx.attrs = OpKind.OPAQUE, {"what": what, "module": ctx.module_path}
    return ctx.fresh(node, node.meta.get("tensor_meta"), reason)


def passthrough(ctx: Ctx, node: fx.Node):
    """Elementwise / spatial ops: the first tensor argument's layout carries over."""
    x = ctx.value(node.args[0]) if node.args else None
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if isinstance(x, Desc) and out_shape is not None:
        if len(out_shape) == len(x.shape) and out_shape[x.axis] == x.shape[x.axis]:
            return x.with_axis(out_shape, x.axis)
        return reshape_like(ctx, node, x, out_shape)
    if isinstance(x, ParamRef) and out_shape == x.shape:
        return x
    if out_shape is None:
        return None
    return Plain(out_shape)


def reshape_like(ctx: Ctx, node: fx.Node, x, out_shape, literal: Tuple[int, ...] = ()):
    """Follow the channel axis through a reshape; ``literal`` lists target dims given as numbers."""
    if isinstance(x, ParamRef):
        kept = [d for d in x.dims]
        # track parameters through unsqueeze/view(1, C, 1, 1)-style reshapes only
        non1_in = [(s, d) for s, d in zip(x.shape, kept) if s != 1]
        if [s for s, _ in non1_in] == [s for s in out_shape if s != 1]:
            it = iter(non1_in)
            dims = tuple(next(it)[1] if s != 1 else None for s in out_shape)
            return ParamRef(x.module, x.name, tuple(out_shape), dims, literal)
        return Plain(tuple(out_shape))
    if not isinstance(x, Desc):
        return Plain(tuple(out_shape)) if out_shape is not None else None
    mapped = map_reshape(x.shape, x.axis, out_shape)
    if mapped is None:
        reason = "reshape splits or mixes the channel axis (e.g. into attention heads)"
        ctx.state.fix(x.segs, reason)
        return ctx.fresh(node, node.meta.get("tensor_meta"), reason)
    axis, factor = mapped
    if axis in literal and out_shape[axis] > 1:
        ctx.state.fix(x.segs, "reshape to a channel count written in forward code")
    return x.with_axis(out_shape, axis, x.inner * factor)


def binary(ctx: Ctx, node: fx.Node):
    """Elementwise ops between tensors merge the channel groups of both sides."""
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if out_shape is None:
        return None
    vals = [v for v in (ctx.value(a) for a in list(node.args) + list(node.kwargs.values()))
            if isinstance(v, TensorValue)]
    rank = len(out_shape)
    descs = [v for v in vals if isinstance(v, Desc)]
    if not descs:
        params = [v for v in vals if isinstance(v, ParamRef)]
        if len(params) == 1 and params[0].shape == out_shape and len(vals) == 1:
            return params[0]
        return Plain(out_shape)
    # the channel axis of the output, as seen from each described input
    lead = None
    for d in descs:
        out_axis = d.axis + rank - len(d.shape)
        if d.shape[d.axis] == 1 and out_shape[out_axis] != 1:
            continue  # this input broadcasts over channels
        if lead is None:
            lead = (d, out_axis)
        elif out_axis != lead[1]:
            ctx.fix_all(descs, "elementwise op between tensors with different channel axes")
            return ctx.fresh(node, node.meta.get("tensor_meta"), "elementwise op between tensors with different channel axes")
    if lead is None:
        lead = (descs[0], descs[0].axis + rank - len(descs[0].shape))
    desc, out_axis = lead
    for v in vals:
        if v is desc:
            continue
        v_axis = out_axis - (rank - len(v.shape))
        ctx.couple(desc, v, v_axis if v_axis >= 0 else None,
                   "elementwise op with a tensor whose channels cannot be followed")
    return desc.with_axis(out_shape, out_axis)


def reduce(ctx: Ctx, node: fx.Node, dims_arg, keepdim: bool):
    x = ctx.value(node.args[0])
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if not isinstance(x, Desc):
        return Plain(out_shape) if out_shape is not None else None
    rank = len(x.shape)
    if dims_arg is None:
        dims = list(range(rank))
    else:
        dims = [dims_arg] if isinstance(dims_arg, int) else list(dims_arg)
        dims = [d % rank for d in dims]
    if x.axis in dims:
        ctx.state.fix(x.segs, f"reduced over the channel axis ({_name(node)})")
        return Plain(out_shape) if out_shape is not None else None
    if out_shape is None:
        return None
    axis = x.axis if keepdim else x.axis - sum(1 for d in dims if d < x.axis)
    return x.with_axis(out_shape, axis)


def _name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))
