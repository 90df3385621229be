"""Element-wise and spatial ops: binary ops merge groups, unary/pooling ops pass them through."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.fx as fx
from torch import nn

from ..graph.rules import binary, opaque, passthrough, reduce
from ..graph.state import Desc
from .forms import numel, tensors
from .registry import Cost, FormFn, OpHandler, OpKind, add_handler

_BINARY = ("add", "sub", "mul", "truediv", "div", "floordiv", "where", "maximum", "minimum",
           "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_", "rsub", "mod",
           "masked_fill", "lerp", "addcmul", "addcdiv", "fmod", "pow", "eq", "ne", "lt", "gt",
           "le", "ge", "clamp", "clip")
_UNARY = ("relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
          "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "elu", "selu", "celu",
          "mish", "softplus", "exp", "log", "sqrt", "rsqrt", "abs", "neg", "clamp_min", "clamp_max",
          "clamp_", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "contiguous",
          "clone", "detach", "float", "half", "bfloat16", "double", "to", "type", "type_as", "erf",
          "sin", "cos", "square", "reciprocal", "sign", "floor", "ceil", "round", "max_pool1d",
          "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_max_pool1d",
          "adaptive_max_pool2d", "lp_pool2d", "drop_path", "stochastic_depth", "roll", "hard_sigmoid",
          "hard_swish", "swish", "gelu_tanh", "neg_", "logsigmoid", "softsign", "tanhshrink",
          "threshold", "glu_", "requires_grad_", "cpu", "cuda", "exp_", "mul_scalar", "pixel_norm",
          "identity")
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                 nn.Hardsigmoid, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
                 nn.Softplus, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.ZeroPad2d, nn.ConstantPad2d,
                 nn.ReflectionPad2d, nn.ReplicationPad2d, nn.LPPool2d, nn.Tanhshrink, nn.Softsign)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_REDUCE = ("mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "max", "min")


def tensor_output(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "shape")


def module_without_tensor(ctx, node: fx.Node, module: nn.Module):
    """Leaf modules that return no single tensor have no channel rule (opaque)."""
    return opaque(ctx, node, f"module {type(module).__name__}")


def fix_through(ctx, node: fx.Node, reason: str):
    """Fix every input's groups and give the output fresh fixed ones."""
    ctx.fix_all([ctx.value(a) for a in node.args], reason)
    return ctx.fresh(node, node.meta.get("tensor_meta"), reason)


class BinaryHandler(OpHandler):
    """Element-wise ops between tensors merge the channel groups of both sides."""

    functions = _BINARY

    def trace(self, ctx, node, module=None):
        return binary(ctx, node)

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.c = nn.Conv2d(3, 6, 3), nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1)
                self.scale = nn.Parameter(torch.ones(1, 6, 1, 1))

            def forward(self, x):
                y = self.a(x) + self.b(x) * self.scale
                return self.c(torch.maximum(y - 1, y / 2))
        return Net(), torch.randn(1, 3, 10, 10)


class UnaryHandler(OpHandler):
    """Activations, casts, dropout and spatial pooling keep the channel layout."""

    functions = _UNARY

    def trace(self, ctx, node, module=None):
        return passthrough(ctx, node)

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1)

            def forward(self, x):
                y = torch.nn.functional.max_pool2d(torch.sigmoid(self.a(x)).relu(), 2)
                return self.b(y.contiguous())
        return Net(), torch.randn(1, 3, 10, 10)


class PassModuleHandler(OpHandler):
    """Activation, dropout, pooling and padding modules keep the channel layout."""

    modules = _PASS_MODULES

    def trace(self, ctx, node, module=None):
        if module is not None and not tensor_output(node):
            return module_without_tensor(ctx, node, module)
        return passthrough(ctx, node)

    def example(self):
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.Hardswish(), nn.MaxPool2d(2), nn.ZeroPad2d(1),
                             nn.Dropout(), nn.Conv2d(6, 4, 1)), torch.randn(1, 3, 10, 10)


class UpsampleHandler(OpHandler):
    """Upsampling keeps channels; fvcore counts nearest (x1) and bilinear (x4) per output element."""

    modules = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
    functions = ("interpolate", "upsample")
    kinds = (OpKind.UPSAMPLE,)

    def trace(self, ctx, node, module=None):
        if module is not None:
            if not tensor_output(node):
                return module_without_tensor(ctx, node, module)
            mode = getattr(module, "mode", "nearest")
        else:
            mode = node.args[3] if len(node.args) > 3 else node.kwargs.get("mode", "nearest")
        ctx.kind, ctx.attrs = OpKind.UPSAMPLE, {"mode": mode}
        return passthrough(ctx, node)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        y = op.output
        per = {"nearest": 1, "bilinear": 4}.get(str(op.attrs.get("mode", "nearest")))
        if per is None or len(y.shape) != 4:
            return None
        return float(per), numel(y, form)

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.up, self.b = nn.Conv2d(3, 6, 3), nn.Upsample(scale_factor=2), nn.Conv2d(6, 4, 1)

            def forward(self, x):
                y = self.up(self.a(x))
                return self.b(torch.nn.functional.interpolate(y, scale_factor=0.5, mode="bilinear"))
        return Net(), torch.randn(1, 3, 8, 8)


def _pool_dims(attrs: Mapping, ndim: int) -> int:
    """Spatial dims of an adaptive pool: ``attrs['dims']``, else the output size's length, else
    the input rank (4-D -> 2, 5-D -> 3; a 3-D input is taken as the batched 1-D case)."""
    if attrs.get("dims"):
        return int(attrs["dims"])
    size = attrs.get("output_size")
    if isinstance(size, (tuple, list)):
        return len(size)
    return {4: 2, 5: 3}.get(ndim, 1)


class AdaptiveAvgPoolHandler(OpHandler):
    """Adaptive average pooling keeps channels; fvcore counts the 2-D op (numel of its input)."""

    modules = _ADAPTIVE
    functions = ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d")
    kinds = (OpKind.ADAPTIVE_AVG_POOL,)

    def trace(self, ctx, node, module=None):
        if module is not None:
            if not tensor_output(node):
                return module_without_tensor(ctx, node, module)
            size, dims = module.output_size, next(i + 1 for i, c in enumerate(_ADAPTIVE) if isinstance(module, c))
        else:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            dims = int(str(node.target if isinstance(node.target, str) else node.target.__name__)[-2])
        ctx.kind, ctx.attrs = OpKind.ADAPTIVE_AVG_POOL, {"output_size": size, "dims": dims}
        return passthrough(ctx, node)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        x = tensors(op)[0]
        if _pool_dims(op.attrs, len(x.shape)) != 2:
            return None
        return 1.0, numel(x, form)

    def example(self):
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3)), \
            torch.randn(1, 3, 10, 10)


class PadHandler(OpHandler):
    """``F.pad`` of spatial axes keeps channels; padding the channel axis fixes them."""

    functions = ("pad",)

    def trace(self, ctx, node, module=None):
        x = ctx.value(node.args[0])
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        if isinstance(x, Desc) and isinstance(pad, (list, tuple)):
            if len(x.shape) - len(pad) // 2 > x.axis:
                return passthrough(ctx, node)
            return fix_through(ctx, node, "padding of the channel axis")
        return passthrough(ctx, node)

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1)

            def forward(self, x):
                return self.b(torch.nn.functional.pad(self.a(x), (1, 1, 1, 1)))
        return Net(), torch.randn(1, 3, 8, 8)


class ReduceHandler(OpHandler):
    """Reductions over other axes keep channels; over the channel axis they fix them."""

    functions = _REDUCE

    def trace(self, ctx, node, module=None):
        name = node.target if isinstance(node.target, str) else node.target.__name__
        meta = node.meta.get("tensor_meta")
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if name in ("max", "min") and dims is None:
            return reduce(ctx, node, None, False)
        if name in ("max", "min") and isinstance(meta, (list, tuple)) and not hasattr(meta, "shape"):
            return opaque(ctx, node, f"{name} with indices")
        return reduce(ctx, node, dims, bool(keep))

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 6, 3), nn.Linear(6, 3)

            def forward(self, x):
                y = self.a(x)
                return self.b(y.mean((2, 3)) + y.amax(dim=(2, 3)))
        return Net(), torch.randn(1, 3, 8, 8)


for _h in (BinaryHandler(), UnaryHandler(), PassModuleHandler(), UpsampleHandler(), AdaptiveAvgPoolHandler(),
           PadHandler(), ReduceHandler()):
    add_handler(_h)
