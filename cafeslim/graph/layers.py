"""Rules for layers with weights: convs and linears produce groups, norms join them.

Both module calls (``nn.Conv2d``) and functional calls on module parameters
(``F.conv2d(x, self.weight, ...)``, as timm writes them) end up in the same rule, which is
told where the weight and bias live.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch.fx as fx
from torch import nn

from ..ops.registry import OpKind
from .rules import Ctx, ParamRef, opaque, passthrough, shape_of
from .state import Desc


def _need_axis(ctx: Ctx, node: fx.Node, x, axis: int, what: str) -> Optional[Desc]:
    """The input's layout on ``axis``, or None after fixing it when it is elsewhere."""
    if isinstance(x, Desc) and x.axis == axis % len(x.shape) and x.inner == 1:
        return x
    if isinstance(x, Desc):
        if x.axis == axis % len(x.shape):
            return x  # inner > 1 is handled by linear
        ctx.state.fix(x.segs, f"{what} reads channels on another axis than the one tracked")
    return None


def conv(ctx: Ctx, node: fx.Node, x, module: str, weight_shape, groups: int, has_bias: bool,
         std: bool = False, transposed: bool = False, extras=()):
    """A convolution whose weight is ``module.weight`` (and bias ``module.bias``)."""
    out_meta = node.meta.get("tensor_meta")
    out_shape = shape_of(out_meta)
    out_ch = weight_shape[1] * groups if transposed else weight_shape[0]
    in_ch = weight_shape[0] if transposed else weight_shape[1] * groups
    ctx.kind = OpKind.CONV
    ctx.attrs = {"groups": groups, "kernel": tuple(weight_shape[2:]), "transposed": transposed,
                 "depthwise": groups > 1 and groups == in_ch == out_ch,
                 "std": ("gain" if "gain" in extras else True) if std else False}
    if transposed:
        return opaque(ctx, node, "a transposed convolution")
    xd = _need_axis(ctx, node, x, 1, "conv")
    name = f"'{module}'"
    if ctx.attrs["depthwise"]:
        if xd is None:
            return ctx.fresh(node, out_meta, f"depthwise conv {name} on an untracked input")
        ctx.state.add_member(xd, module, "weight", 0, "out")
        if has_bias:
            ctx.state.add_member(xd, module, "bias", 0, "out")
        return xd.with_axis(out_shape, 1)
    if groups > 1:
        if xd is not None and (len(xd.segs) != 1 or in_ch % groups):
            ctx.state.fix(xd.segs, f"grouped conv {name} reads a concatenation")
        elif xd is not None:
            ctx.state.set_blocks(xd.segs, groups, f"grouped conv {name} does not fit the group's blocks")
            ctx.state.add_member(xd, module, "weight", 1, "in", blocks=groups)
        if out_ch != groups and groups == in_ch:
            if xd is not None:
                ctx.state.fix(xd.segs, f"depthwise conv {name} with a channel multiplier")
            return ctx.fresh(node, out_meta, f"depthwise conv {name} with a channel multiplier")
    elif xd is not None:
        # A weight-standardised conv normalises each filter over its inputs: slimming them is
        # still exact between supernet and slimmed model, like a LayerNorm, but not equivalent
        # to zeroing the removed inputs (check marks that property n/a).
        ctx.state.add_member(xd, module, "weight", 1, "in_std" if std else "in")
    out = ctx.producer(node, out_shape, 1, module)
    if groups > 1:
        ctx.state.set_blocks(out.segs, groups, f"grouped conv {name} output blocks")
    ctx.state.add_member(out, module, "weight", 0, "out")
    if has_bias:
        ctx.state.add_member(out, module, "bias", 0, "out")
    for name in extras:
        ctx.state.add_member(out, module, name, 0, "out")
    return out


def linear(ctx: Ctx, node: fx.Node, x, module: str, weight_shape, has_bias: bool):
    out_shape = shape_of(node.meta.get("tensor_meta"))
    ctx.kind, ctx.attrs = OpKind.LINEAR, {"bias": has_bias}
    last = len(out_shape) - 1
    if isinstance(x, Desc) and x.axis == len(x.shape) - 1:
        ctx.state.add_member(x, module, "weight", 1, "in")
    elif isinstance(x, Desc):
        ctx.state.fix(x.segs, f"linear '{module}' reads channels on another axis than the one tracked")
    out = ctx.producer(node, out_shape, last, module)
    ctx.state.add_member(out, module, "weight", 0, "out")
    if has_bias:
        ctx.state.add_member(out, module, "bias", 0, "out")
    return out


def norm(ctx: Ctx, node: fx.Node, x, module: str, kind: str, names, axis: int, *,
         blocks: int = 1, updatable: bool = True, label: str = ""):
    """A per-channel norm: its affine params and statistics join the input's groups.

    ``kind`` is the record's :class:`OpKind`; ``label`` names the op in fix reasons.
    """
    ctx.kind = kind
    kind = label or str(kind)
    ctx.attrs = {"affine": "weight" in names}
    out_shape = shape_of(node.meta.get("tensor_meta"))
    if not isinstance(x, Desc):
        return passthrough(ctx, node)
    if x.axis != axis % len(x.shape) or x.inner != 1:
        ctx.state.fix(x.segs, f"{kind} '{module}' normalises over an axis that is not the tracked channel axis")
        return x.with_axis(out_shape, x.axis)
    if not updatable:
        ctx.state.fix(x.segs, f"{kind} in '{module}' has its channel count written in forward code")
    if blocks > 1:
        if len(x.segs) != 1:
            ctx.state.fix(x.segs, f"{kind} '{module}' groups channels across a concatenation")
        else:
            ctx.state.set_blocks(x.segs, blocks, f"{kind} '{module}' groups do not fit")
    for n in names:
        ctx.state.add_member(x, module, n, 0, "norm")
    if ctx.kind == OpKind.LAYER_NORM and "weight" not in names:
        ctx.state.add_member(x, module, "normalized_shape", 0, "attr")
    return x.with_axis(out_shape, x.axis)


def existing(mod: nn.Module, names: Sequence[str], channels: int) -> list:
    """Those of ``names`` that are 1-D tensors of ``channels`` entries on ``mod``."""
    out = []
    for n in names:
        t = getattr(mod, n, None)
        if t is not None and hasattr(t, "shape") and t.dim() == 1 and t.shape[0] == channels:
            out.append(n)
    return out


def fname(node: fx.Node) -> str:
    """The function, method or module name of a node (``conv2d``, ``view``, ``layer1.0.conv1``)."""
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t))


def arg(ctx: Ctx, node: fx.Node, i: int, key: str) -> Any:
    """The value of argument ``i`` (or keyword ``key``) of a call."""
    return ctx.value(node.args[i]) if len(node.args) > i else ctx.value(node.kwargs.get(key))


def owner(p: Any) -> Optional[ParamRef]:
    """``p`` when it is a module's own tensor, not reshaped or permuted."""
    if isinstance(p, ParamRef) and all(d == i for i, d in enumerate(p.dims)):
        return p
    return None
