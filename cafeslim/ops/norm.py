"""Normalisations: batch/instance/group/layer norms (modules and functions) and PReLU.

This module holds cafeslim's only BatchNorm-like detector (:func:`is_bn_like`): BatchNorm
subclasses, the registered look-alikes (torchvision's and timm's frozen BNs, timm's
``InplaceAbn``) and any module with an int ``num_features`` and a ``running_mean`` buffer.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.fx as fx
from torch import nn

from ..errors import SpecError
from ..graph import layers
from ..graph.rules import opaque, passthrough
from .forms import numel, tensors
from .registry import Cost, FormFn, OpHandler, OpKind, ShapeFn, add_handler

_BN_STATS = ("weight", "bias", "running_mean", "running_var")


def _optional_types(*paths: str) -> Tuple[type, ...]:
    out = []
    for path in paths:
        mod, _, name = path.rpartition(".")
        try:
            out.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(out)


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,) + _optional_types(
    "torchvision.ops.misc.FrozenBatchNorm2d", "timm.layers.FrozenBatchNorm2d",
    "timm.layers.FrozenBatchNormAct2d", "timm.layers.InplaceAbn")
_LN_TYPES = (nn.LayerNorm,) + _optional_types(
    "torch.nn.RMSNorm", "timm.layers.RmsNorm", "timm.layers.RmsNorm2d", "timm.layers.SimpleNorm",
    "timm.layers.SimpleNorm2d")


def is_bn_like(module: nn.Module) -> bool:
    """BatchNorm subclasses, registered look-alikes, and modules shaped like one.

    Example:
        >>> is_bn_like(nn.BatchNorm2d(4)), is_bn_like(nn.LayerNorm(4))
        (True, False)
    """
    if isinstance(module, _BN_TYPES):
        return True
    return isinstance(getattr(module, "num_features", None), int) and "running_mean" in module._buffers


def _num_features(shape: ShapeFn) -> Dict[str, Any]:
    for name in _BN_STATS:
        s = shape(name)
        if s:
            return {"num_features": s[0]}
    return {}


def _norm_cost(op, form: FormFn) -> Cost:
    # layer/group/instance norm: fvcore counts 5 per element with an affine weight, 4 without.
    return float(5 if op.attrs.get("affine", True) else 4), numel(tensors(op)[0], form)


def _functional(ctx, node: fx.Node, fname: str):
    """``F.batch_norm``/``layer_norm``/``group_norm``/``instance_norm`` on module parameters."""
    if node.op != "call_function":
        return None
    x = ctx.value(node.args[0])
    two = fname in ("layer_norm", "group_norm")
    idx, keys = ((2, 3), _BN_STATS[:2]) if two else ((3, 4, 1, 2), _BN_STATS)
    refs = [r for r in (layers.arg(ctx, node, i, k) for i, k in zip(idx, keys)) if r is not None]
    if any(layers.owner(r) is None for r in refs):
        return opaque(ctx, node, f"{fname} with computed affine parameters")
    if len({r.module for r in refs}) > 1:
        return opaque(ctx, node, f"{fname} with parameters of several modules")
    module = refs[0].module if refs else (ctx.module_path or "")
    names = [r.name for r in refs]
    if fname == "layer_norm":
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if isinstance(shape, fx.Node):
            return layers.norm(ctx, node, x, module, OpKind.LAYER_NORM, names, -1)
        if len(tuple(shape)) != 1:
            return opaque(ctx, node, "layer_norm over several dims")
        updatable = isinstance(ctx.modules.get(module), nn.LayerNorm)
        return layers.norm(ctx, node, x, module, OpKind.LAYER_NORM, names, -1, updatable=updatable)
    if fname == "group_norm":
        ng = node.args[1] if len(node.args) > 1 else node.kwargs.get("num_groups")
        if not isinstance(ng, int):
            return opaque(ctx, node, "group_norm with computed groups")
        return layers.norm(ctx, node, x, module, OpKind.GROUP_NORM, names, 1, blocks=ng)
    return layers.norm(ctx, node, x, module, OpKind(fname), names, 1)


class BatchNormHandler(OpHandler):
    """BatchNorm and look-alikes: weight, bias and running statistics join the input's group."""

    modules = _BN_TYPES
    functions = ("batch_norm",)
    kinds = (OpKind.BATCH_NORM,)

    def claims(self, module: nn.Module) -> bool:
        return is_bn_like(module)

    def leaf(self, module: nn.Module) -> bool:
        return is_bn_like(module)

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        if module is None:
            return _functional(ctx, node, "batch_norm")
        x = ctx.value(node.args[0]) if node.args else None
        c = getattr(module, "num_features", None) or (x.channels if hasattr(x, "segs") else 0)
        names = layers.existing(module, _BN_STATS, c)
        return layers.norm(ctx, node, x, node.target, OpKind.BATCH_NORM, names, 1)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        # batchnorm_flop_jit: eval uses 2/1 per element; training mode (or no running stats,
        # which makes eval call batch_norm with training=True) uses the generic norm count.
        affine = op.attrs.get("affine", True)
        per = (5 if affine else 4) if op.attrs.get("training", False) else (2 if affine else 1)
        return float(per), numel(tensors(op)[0], form)

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        # Only modules that have the attribute (torchvision's FrozenBatchNorm2d has none).
        return _num_features(shape) if isinstance(getattr(module, "num_features", None), int) else {}

    def channel_count(self, module: nn.Module) -> Optional[int]:
        n = getattr(module, "num_features", None)
        if isinstance(n, int):
            return n
        # torchvision's FrozenBatchNorm2d (pretrained detectors) has no num_features: its
        # statistics tell, so widths.json lists it and slim's member check covers it.
        stats = getattr(module, "running_mean", None)
        return int(stats.shape[0]) if isinstance(stats, torch.Tensor) and stats.dim() == 1 else None

    def example(self):
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1)), \
            torch.randn(1, 3, 10, 10)


class InstanceNormHandler(BatchNormHandler):
    """InstanceNorm: like a BatchNorm for channels, counted as a generic norm by fvcore."""

    modules = (nn.modules.instancenorm._InstanceNorm,)
    functions = ("instance_norm",)
    kinds = (OpKind.INSTANCE_NORM,)

    def claims(self, module: nn.Module) -> bool:
        return False

    def leaf(self, module: nn.Module) -> bool:
        return False

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        if module is None:
            return _functional(ctx, node, "instance_norm")
        names = layers.existing(module, _BN_STATS, module.num_features)
        return layers.norm(ctx, node, ctx.value(node.args[0]), node.target, OpKind.INSTANCE_NORM, names, 1)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        return _norm_cost(op, form)

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        return _num_features(shape)

    def example(self):
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.InstanceNorm2d(6, affine=True), nn.Conv2d(6, 4, 1)), \
            torch.randn(1, 3, 10, 10)


class LayerNormHandler(OpHandler):
    """LayerNorm over the last axis; RMSNorm-style modules share its slimmed attribute."""

    modules = _LN_TYPES
    functions = ("layer_norm",)
    kinds = (OpKind.LAYER_NORM,)

    def claims(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "normalized_shape", None), (tuple, list))

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        if module is None:
            return _functional(ctx, node, "layer_norm")
        if not isinstance(module, nn.LayerNorm):
            return None  # a leaf RMSNorm: no channel rule, opaque
        if len(module.normalized_shape) != 1:
            return opaque(ctx, node, f"LayerNorm over {len(module.normalized_shape)} dims")
        names = layers.existing(module, ("weight", "bias"), module.normalized_shape[0])
        return layers.norm(ctx, node, ctx.value(node.args[0]), node.target, OpKind.LAYER_NORM, names, -1)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        return _norm_cost(op, form)

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        w = shape("weight") or shape("bias")
        return {"normalized_shape": type(module.normalized_shape)(w)} if w else {}

    def channel_count(self, module: nn.Module) -> Optional[int]:
        return module.normalized_shape[0] if module.normalized_shape else None

    def describe(self, module: nn.Module) -> Optional[Dict[str, Any]]:
        return {"channels": list(module.normalized_shape)}

    def example(self):
        return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3)), torch.randn(2, 5, 4)


class GroupNormHandler(OpHandler):
    """GroupNorm: its groups become blocks of the input's channel group."""

    modules = (nn.GroupNorm,)
    functions = ("group_norm",)
    kinds = (OpKind.GROUP_NORM,)

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        if module is None:
            return _functional(ctx, node, "group_norm")
        names = layers.existing(module, ("weight", "bias"), module.num_channels)
        return layers.norm(ctx, node, ctx.value(node.args[0]), node.target, OpKind.GROUP_NORM, names, 1,
                           blocks=module.num_groups)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        return _norm_cost(op, form)

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        w = shape("weight") or shape("bias")
        if w and w[0] % module.num_groups:
            raise SpecError(f"GroupNorm keeps {w[0]} channels, not a multiple of {module.num_groups} groups")
        return {"num_channels": w[0]} if w else {}

    def channel_count(self, module: nn.Module) -> Optional[int]:
        return module.num_channels

    def example(self):
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1)), torch.randn(1, 3, 10, 10)


class PReLUHandler(OpHandler):
    """PReLU: a per-channel slope joins the input's group (a single slope passes through)."""

    modules = (nn.PReLU,)

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        if module is None:
            return None
        if module.num_parameters == 1:
            return passthrough(ctx, node)
        ctx.op_name = "prelu"
        return layers.norm(ctx, node, ctx.value(node.args[0]), node.target, OpKind.OTHER, ["weight"], 1,
                           label="other:prelu")

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        w = shape("weight")
        return {"num_parameters": int(torch.Size(w).numel())} if w and module.num_parameters > 1 else {}

    def example(self):
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.PReLU(6), nn.Conv2d(6, 4, 1), nn.PReLU()), \
            torch.randn(1, 3, 10, 10)


for _h in (BatchNormHandler(), InstanceNormHandler(), LayerNormHandler(), GroupNormHandler(), PReLUHandler()):
    add_handler(_h)
