"""Convolutions: ``nn.Conv*d`` (and subclasses) and ``F.conv*d`` on a module's own weight."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

from ..errors import SpecError
from ..graph import layers
from ..graph.rules import ParamRef, opaque
from .registry import Cost, FormFn, OpHandler, OpKind, ShapeFn, add_handler

_STD_CONVS: Optional[Tuple[type, ...]] = None


def std_conv_types() -> Tuple[type, ...]:
    """Registered weight-standardised conv types (timm's, when timm is importable)."""
    global _STD_CONVS
    if _STD_CONVS is None:
        try:
            from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
            _STD_CONVS = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)
        except ImportError:
            _STD_CONVS = ()
    return _STD_CONVS


def _timm_notrace_modules() -> Tuple[type, ...]:
    try:
        from timm.models._features_fx import get_notrace_modules
    except ImportError:  # timm missing or too old
        return ()
    return tuple(get_notrace_modules())


def register_std_conv(cls: type) -> None:
    """Mark a conv class as weight-standardised (it normalises each filter over its inputs).

    Example:
        >>> register_std_conv(MyWsConv2d)            # doctest: +SKIP
    """
    global _STD_CONVS
    _STD_CONVS = std_conv_types() + (cls,)


def is_std_conv(module: nn.Module) -> bool:
    """Weight-standardised convs (timm's ``StdConv2d``, ``ScaledStdConv2d`` ... or registered ones)."""
    return isinstance(module, nn.modules.conv._ConvNd) and isinstance(module, std_conv_types())


def std_cost(op, modules: Mapping[str, nn.Module]) -> int:
    """Per-element cost of a conv's weight standardisation (0 for a plain conv).

    timm's StdConv2d/ScaledStdConv2d normalise their weight with ``F.batch_norm(training=True)``
    on every call, which fvcore counts as 4 per weight element, 5 with the gain as its affine
    weight. Taken from ``attrs["std"]`` (bool, or ``"gain"``) or else from the module's type.
    """
    std = op.attrs.get("std")
    if std is None:
        mod = modules.get(op.module)
        if mod is None or not is_std_conv(mod):
            return 0
        std = "gain" if getattr(mod, "gain", None) is not None else True
    return 0 if not std else 5 if std == "gain" else 4


def _per_output(mod: nn.Module, out_ch: int) -> Tuple[str, ...]:
    """Other tensors of a conv module with one entry per output channel (a ScaledStdConv's gain)."""
    names = []
    for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
        if name not in ("weight", "bias") and t.dim() >= 1 and t.shape[0] == out_ch and t.numel() == out_ch:
            names.append(name)
    return tuple(names)


def conv_attrs(mod: nn.modules.conv._ConvNd, w: Sequence[int]) -> Dict[str, Any]:
    """``in_channels``/``out_channels`` (and depthwise ``groups``) for a sliced weight shape ``w``."""
    g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
    transposed = bool(getattr(mod, "transposed", False))
    # Transposed conv weights are (in, out/groups, ...); regular ones (out, in/groups, ...).
    per_group_in, per_group_out = (w[0], w[1]) if transposed else (w[1], w[0])
    if g > 1 and g == cin:
        # Depthwise (possibly with a channel multiplier): one group per input channel.
        mult = cout // cin
        new_in = per_group_in if transposed else w[0] // mult
        if (not transposed and w[0] % mult) or new_in < 1:
            raise SpecError(f"depthwise conv keeps {w[0]} outputs, not a multiple of its multiplier {mult}")
        new_g = new_in
        new_out = per_group_out * new_g if transposed else w[0]
        return {"in_channels": new_in, "out_channels": new_out, "groups": new_g}
    if transposed:
        new_in, new_out = w[0], w[1] * g
    else:
        new_in, new_out = w[1] * g, w[0]
    if new_in % g or new_out % g:
        raise SpecError(f"grouped conv (groups={g}) would get {new_in} inputs and {new_out} outputs")
    return {"in_channels": new_in, "out_channels": new_out}


class ConvHandler(OpHandler):
    """Convs produce a group (their outputs) and consume their input's groups."""

    modules = (nn.modules.conv._ConvNd,)
    functions = ("conv1d", "conv2d", "conv3d")
    kinds = (OpKind.CONV,)

    def leaf(self, module: nn.Module) -> bool:
        # A weight-standardised conv's forward normalises its weight; as one call it keeps
        # the conv rule (and its std cost) instead of a graph of weight arithmetic. timm's own
        # no-trace modules are leaves only when they are convs (the others are traced through,
        # so that their channels stay searchable).
        return is_std_conv(module) or isinstance(module, _timm_notrace_modules())

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        x = ctx.value(node.args[0]) if node.args else None
        if module is not None:
            return layers.conv(ctx, node, x, node.target, tuple(module.weight.shape), module.groups,
                               module.bias is not None, std=is_std_conv(module),
                               transposed=module.transposed, extras=_per_output(module, module.out_channels))
        return self._functional(ctx, node, x, layers.fname(node))

    def _functional(self, ctx, node: fx.Node, x, fname: str):
        if node.op != "call_function":
            return None
        w, b = layers.owner(layers.arg(ctx, node, 1, "weight")), layers.arg(ctx, node, 2, "bias")
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        if w is None or w.name != "weight" or not isinstance(groups, int):
            return opaque(ctx, node, f"{fname} with a computed weight")
        mod = ctx.modules.get(w.module)
        has_bias = isinstance(b, ParamRef) and b.module == w.module and b.name == "bias"
        if b is not None and not has_bias:
            return opaque(ctx, node, f"{fname} with a computed bias")
        if not (isinstance(mod, nn.modules.conv._ConvNd) or groups == 1):
            return opaque(ctx, node, f"{fname} whose groups are written in forward code")
        return layers.conv(ctx, node, x, w.module, w.shape, groups, has_bias,
                           std=mod is not None and is_std_conv(mod))

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        # conv_flop_count: N * prod(weight) * prod(out spatial) (input spatial when transposed);
        # weight is [out, in/groups, *k] ([in, out/groups, *k] transposed): either way
        # N * in * out / groups * prod(k). Depthwise convs keep in/groups == 1 at any width.
        # Weight standardisation adds std * numel(weight), the same product without N * spatial.
        a, std = op.attrs, std_cost(op, modules)
        x, y = [d for d in op.inputs if d is not None][0], op.output
        spatial = (x if a.get("transposed") else y).shape[2:]
        coef = float((x.shape[0] * math.prod(spatial) + std) * math.prod(a["kernel"]))
        if a.get("depthwise"):
            return coef, [form(y, 1)]
        return coef / a.get("groups", 1), [form(x, 1), form(y, 1)]

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        return conv_attrs(module, shape("weight"))

    def channel_count(self, module: nn.Module) -> Optional[int]:
        return module.out_channels

    def describe(self, module: nn.Module) -> Optional[Dict[str, Any]]:
        return {"in": module.in_channels, "out": module.out_channels, "groups": module.groups}

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.dw = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
                self.g, self.w = nn.Conv2d(6, 4, 1, groups=2), nn.Conv2d(4, 5, 1)

            def forward(self, x):
                y = self.g(self.dw(self.a(x)).relu())
                return torch.nn.functional.conv2d(y, self.w.weight, self.w.bias)
        return Net(), torch.randn(1, 3, 12, 12)


add_handler(ConvHandler())
