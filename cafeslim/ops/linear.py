"""Linear layers: ``nn.Linear`` (and subclasses) and ``F.linear`` on a module's own weight."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.fx as fx
from torch import nn

from ..graph import layers
from ..graph.rules import ParamRef, opaque
from .registry import Cost, FormFn, OpHandler, OpKind, ShapeFn, add_handler
from .forms import numel


class LinearHandler(OpHandler):
    """A linear layer produces a group on the last axis and consumes its input's last axis."""

    modules = (nn.Linear,)
    functions = ("linear",)
    kinds = (OpKind.LINEAR,)

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        x = ctx.value(node.args[0]) if node.args else None
        if module is not None:
            return layers.linear(ctx, node, x, node.target, tuple(module.weight.shape), module.bias is not None)
        if node.op != "call_function":
            return None
        w, b = layers.owner(layers.arg(ctx, node, 1, "weight")), layers.arg(ctx, node, 2, "bias")
        has_bias = isinstance(b, ParamRef) and w is not None and b.module == w.module and b.name == "bias"
        if w is None or w.name != "weight" or (b is not None and not has_bias):
            return opaque(ctx, node, "linear with a computed weight")
        return layers.linear(ctx, node, x, w.module, w.shape, has_bias)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        # linear_flop_jit: numel(input) * out_features (bias not counted).
        x, y = [d for d in op.inputs if d is not None][0], op.output
        return 1.0, numel(x, form) + [form(y, len(y.shape) - 1)]

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        w = shape("weight")
        return {"in_features": w[1], "out_features": w[0]}

    def channel_count(self, module: nn.Module) -> Optional[int]:
        return module.out_features

    def describe(self, module: nn.Module) -> Optional[Dict[str, Any]]:
        return {"in": module.in_features, "out": module.out_features}

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

            def forward(self, x):
                y = self.a(x.flatten(2).transpose(1, 2)).relu()
                y = torch.nn.functional.linear(y, self.b.weight, self.b.bias).mean(1)
                return self.head(y)
        return Net(), torch.randn(2, 4, 4, 4)


add_handler(LinearHandler())
