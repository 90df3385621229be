"""Rules for layers with weights: convs and linears produce groups, norms join them.

Both module calls (``nn.Conv2d``) and functional calls on module parameters
(``F.conv2d(x, self.weight, ...)``, as timm writes them) end up in the same rule, which is
told where the weight and bias live.
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx
from torch import nn

from .rules import Ctx, ParamRef, opaque, passthrough, shape_of
from .state import Desc
from .trace import is_bn_like, is_std_conv


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
    ctx.kind = "conv"
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


def _per_output(mod: nn.Module, out_ch: int):
    """Other tensors of a conv module with one entry per output channel (a ScaledStdConv's gain)."""
    names = []
    for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
        if name not in ("weight", "bias") and t.dim() >= 1 and t.shape[0] == out_ch and t.numel() == out_ch:
            names.append(name)
    return tuple(names)


def linear(ctx: Ctx, node: fx.Node, x, module: str, weight_shape, has_bias: bool):
    out_shape = shape_of(node.meta.get("tensor_meta"))
    ctx.kind, ctx.attrs = "linear", {"bias": has_bias}
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
         blocks: int = 1, updatable: bool = True):
    """A per-channel norm: its affine params and statistics join the input's groups."""
    ctx.kind = kind
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
    if kind == "layer_norm" and "weight" not in names:
        ctx.state.add_member(x, module, "normalized_shape", 0, "attr")
    return x.with_axis(out_shape, x.axis)


def _existing(mod: nn.Module, names, channels: int):
    out = []
    for n in names:
        t = getattr(mod, n, None)
        if t is not None and hasattr(t, "shape") and t.dim() == 1 and t.shape[0] == channels:
            out.append(n)
    return out


def call_module(ctx: Ctx, node: fx.Node, mod: nn.Module):
    """Rules for leaf modules; None when the module has no rule here."""
    x = ctx.value(node.args[0]) if node.args else None
    path = node.target
    if isinstance(mod, nn.modules.conv._ConvNd):
        return conv(ctx, node, x, path, tuple(mod.weight.shape), mod.groups, mod.bias is not None,
                    std=is_std_conv(mod), transposed=mod.transposed,
                    extras=_per_output(mod, mod.out_channels))
    if isinstance(mod, nn.Linear):
        return linear(ctx, node, x, path, tuple(mod.weight.shape), mod.bias is not None)
    if is_bn_like(mod):
        c = getattr(mod, "num_features", None) or (x.channels if isinstance(x, Desc) else 0)
        names = _existing(mod, ("weight", "bias", "running_mean", "running_var"), c)
        return norm(ctx, node, x, path, "batch_norm", names, 1)
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) != 1:
            return opaque(ctx, node, f"LayerNorm over {len(mod.normalized_shape)} dims")
        names = _existing(mod, ("weight", "bias"), mod.normalized_shape[0])
        return norm(ctx, node, x, path, "layer_norm", names, -1)
    if isinstance(mod, nn.GroupNorm):
        names = _existing(mod, ("weight", "bias"), mod.num_channels)
        return norm(ctx, node, x, path, "group_norm", names, 1, blocks=mod.num_groups)
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        names = _existing(mod, ("weight", "bias", "running_mean", "running_var"), mod.num_features)
        return norm(ctx, node, x, path, "instance_norm", names, 1)
    if isinstance(mod, nn.PReLU):
        if mod.num_parameters == 1:
            return passthrough(ctx, node)
        return norm(ctx, node, x, path, "other:prelu", ["weight"], 1)
    return None


def call_functional(ctx: Ctx, node: fx.Node, fname: str):
    """Functional layers (``F.conv2d``, ``F.linear``, ``F.layer_norm`` ...) on parameters."""
    x = ctx.value(node.args[0])
    modules = ctx.modules

    def param(i, key):
        v = ctx.value(node.args[i]) if len(node.args) > i else ctx.value(node.kwargs.get(key))
        return v

    def owner(p):
        if isinstance(p, ParamRef) and all(d == i for i, d in enumerate(p.dims)):
            return p
        return None

    if fname in ("conv1d", "conv2d", "conv3d"):
        w, b = owner(param(1, "weight")), param(2, "bias")
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        if w is None or w.name != "weight" or not isinstance(groups, int):
            return opaque(ctx, node, f"{fname} with a computed weight")
        mod = modules.get(w.module)
        has_bias = isinstance(b, ParamRef) and b.module == w.module and b.name == "bias"
        if b is not None and not has_bias:
            return opaque(ctx, node, f"{fname} with a computed bias")
        depthwise_ok = isinstance(mod, nn.modules.conv._ConvNd) or groups == 1
        if not depthwise_ok:
            return opaque(ctx, node, f"{fname} whose groups are written in forward code")
        return conv(ctx, node, x, w.module, w.shape, groups, has_bias,
                    std=mod is not None and is_std_conv(mod))
    if fname == "linear":
        w, b = owner(param(1, "weight")), param(2, "bias")
        has_bias = isinstance(b, ParamRef) and w is not None and b.module == w.module and b.name == "bias"
        if w is None or w.name != "weight" or (b is not None and not has_bias):
            return opaque(ctx, node, "linear with a computed weight")
        return linear(ctx, node, x, w.module, w.shape, has_bias)
    if fname in ("layer_norm", "group_norm", "batch_norm", "instance_norm"):
        idx = {"layer_norm": (2, 3), "group_norm": (2, 3), "batch_norm": (3, 4, 1, 2),
               "instance_norm": (3, 4, 1, 2)}[fname]
        keys = {"layer_norm": ("weight", "bias"), "group_norm": ("weight", "bias"),
                "batch_norm": ("weight", "bias", "running_mean", "running_var"),
                "instance_norm": ("weight", "bias", "running_mean", "running_var")}[fname]
        refs = [param(i, k) for i, k in zip(idx, keys)]
        refs = [r for r in refs if r is not None]
        if any(owner(r) is None for r in refs):
            return opaque(ctx, node, f"{fname} with computed affine parameters")
        mods = {r.module for r in refs}
        if len(mods) > 1:
            return opaque(ctx, node, f"{fname} with parameters of several modules")
        module = refs[0].module if refs else (ctx.module_path or "")
        mod = modules.get(module)
        names = [r.name for r in refs]
        if fname == "layer_norm":
            shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
            if isinstance(shape, fx.Node):
                return norm(ctx, node, x, module, fname, names, -1)
            if len(tuple(shape)) != 1:
                return opaque(ctx, node, "layer_norm over several dims")
            return norm(ctx, node, x, module, fname, names, -1, updatable=isinstance(mod, nn.LayerNorm))
        if fname == "group_norm":
            ng = node.args[1] if len(node.args) > 1 else node.kwargs.get("num_groups")
            if not isinstance(ng, int):
                return opaque(ctx, node, "group_norm with computed groups")
            return norm(ctx, node, x, module, fname, names, 1, blocks=ng)
        return norm(ctx, node, x, module, fname, names, 1)
    return None
