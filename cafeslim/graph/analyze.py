"""``analyze(model, example_input) -> ChannelGraph``: the channel groups of any traced model.

The pass walks the fx graph once, applying the rules of ``rules.py``, ``layers.py`` and
``structure.py`` to every node. Cuts discovered on the way (a split in the middle of a
conv's outputs) are fed back and the pass is repeated until no new cut appears; the last
pass's union-find classes are the groups.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, Optional, Set

import torch
import torch.fx as fx
from torch import nn

from ..errors import TraceError
from . import layers, structure
from .channel_graph import ChannelGraph, OpRecord, TensorDesc
from .rules import Ctx, ParamRef, Plain, binary, opaque, passthrough, reduce
from .state import Desc, State
from .trace import Traced, trace

MAX_PASSES = 50

_BINARY = {"add", "sub", "mul", "truediv", "div", "floordiv", "where", "maximum", "minimum",
           "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_", "rsub", "mod",
           "masked_fill", "lerp", "addcmul", "addcdiv", "fmod", "pow", "eq", "ne", "lt", "gt",
           "le", "ge", "clamp", "clip"}
_UNARY = {"relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
          "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "elu", "selu", "celu",
          "mish", "softplus", "exp", "log", "sqrt", "rsqrt", "abs", "neg", "clamp_min", "clamp_max",
          "clamp_", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "contiguous",
          "clone", "detach", "float", "half", "bfloat16", "double", "to", "type", "type_as", "erf",
          "sin", "cos", "square", "reciprocal", "sign", "floor", "ceil", "round", "max_pool1d",
          "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_max_pool1d",
          "adaptive_max_pool2d", "lp_pool2d", "interpolate", "upsample", "drop_path",
          "stochastic_depth", "roll", "hard_sigmoid", "hard_swish", "swish", "gelu_tanh", "neg_",
          "logsigmoid", "softsign", "tanhshrink", "threshold", "glu_", "requires_grad_", "cpu",
          "cuda", "exp_", "mul_scalar", "pixel_norm", "identity"}
_POOL_ADAPTIVE = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"}
_RESHAPE = {"view", "reshape", "flatten", "view_as", "reshape_as", "unsqueeze", "squeeze",
            "unflatten", "unsqueeze_", "squeeze_"}
_PERMUTE = {"permute", "transpose", "swapaxes", "swapdims", "t", "movedim"}
_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "max", "min"}
_SPLIT = {"split", "chunk", "unbind", "tensor_split", "split_with_sizes"}
_CHANNEL_MIXING = {"softmax", "log_softmax", "normalize", "local_response_norm", "cumsum"}
_NON_TENSOR = {"size", "dim", "numel", "getattr", "_assert", "ndimension", "is_contiguous",
               "element_size", "get_device", "_assert_async"}
_MATMUL = {"matmul", "mm", "bmm", "baddbmm", "addmm", "einsum", "scaled_dot_product_attention"}

_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                 nn.Hardsigmoid, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
                 nn.Softplus, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample,
                 nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d,
                 nn.ReflectionPad2d, nn.ReplicationPad2d, nn.LPPool2d, nn.Tanhshrink, nn.Softsign)
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _fname(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t))


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "") if stack else ""


def _run_node(ctx: Ctx, node: fx.Node, autowrap: Set[Any]):
    op, name = node.op, _fname(node)
    meta = node.meta.get("tensor_meta")
    if op == "placeholder":
        return ctx.fresh(node, meta, "model input")
    if op == "get_attr":
        obj = ctx.gm_attr(node.target)
        if isinstance(obj, torch.Tensor):
            module, _, pname = str(node.target).rpartition(".")
            return ParamRef(module, pname, tuple(obj.shape), tuple(range(obj.dim())))
        return obj
    if op == "output":
        ctx.fix_all(ctx.value(node.args[0]), "model output")
        return None
    if op == "call_module":
        mod = ctx.modules[node.target]
        out = layers.call_module(ctx, node, mod)
        if out is not None:
            return out
        if not _is_tensor_meta(meta):
            return opaque(ctx, node, f"module {type(mod).__name__}")
        if isinstance(mod, _PASS_MODULES):
            if isinstance(mod, (nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)):
                ctx.kind, ctx.attrs = "upsample", {"mode": getattr(mod, "mode", "nearest")}
            return passthrough(ctx, node)
        if isinstance(mod, _ADAPTIVE_MODULES):
            ctx.kind = "adaptive_avg_pool"
            ctx.attrs = {"output_size": mod.output_size, "dims": next(i + 1 for i, c in enumerate(_ADAPTIVE_MODULES) if isinstance(mod, c))}
            return passthrough(ctx, node)
        if isinstance(mod, nn.Flatten):
            return structure.reshape(ctx, node)
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            return _channel_mixing(ctx, node, mod.dim)
        return opaque(ctx, node, f"module {type(mod).__name__}")
    # call_function / call_method
    if node.target is operator.getitem:
        return structure.getitem(ctx, node)
    if name in ("getattr", "size"):
        return _shape_value(ctx, node, name)
    if name in _NON_TENSOR or not (_is_tensor_meta(meta) or isinstance(meta, (list, tuple))):
        sizes = [v for v in _flat_values(ctx, node) if isinstance(v, SizeOf)]
        return SizeOf(sizes[0].desc, False) if sizes else None
    if node.target in autowrap:
        ident = node.meta.get("identity_of")
        if ident is not None:
            return ctx.value(node.args[ident])
        return opaque(ctx, node, f"function {name}")
    out = layers.call_functional(ctx, node, name) if op == "call_function" else None
    if out is not None:
        return out
    if name in _BINARY:
        return binary(ctx, node)
    if name in _UNARY:
        if name in ("interpolate", "upsample"):
            mode = node.args[3] if len(node.args) > 3 else node.kwargs.get("mode", "nearest")
            ctx.kind, ctx.attrs = "upsample", {"mode": mode}
        return passthrough(ctx, node)
    if name in _POOL_ADAPTIVE:
        ctx.kind = "adaptive_avg_pool"
        ctx.attrs = {"output_size": node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size"),
                     "dims": int(name[-2])}
        return passthrough(ctx, node)
    if name == "pad":
        return _pad(ctx, node)
    if name in _RESHAPE:
        return structure.reshape(ctx, node)
    if name in _PERMUTE:
        return structure.permute(ctx, node, name)
    if name in ("expand", "expand_as"):
        return structure.expand(ctx, node)
    if name in ("cat", "concat", "concatenate"):
        return structure.cat(ctx, node)
    if name == "stack":
        return structure.cat(ctx, node, stack=True)
    if name in _SPLIT:
        return structure.split(ctx, node, "split" if name == "split_with_sizes" else name)
    if name in _REDUCE:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if name in ("max", "min") and dims is None:
            return reduce(ctx, node, None, False)
        if name in ("max", "min") and isinstance(meta, (list, tuple)) and not hasattr(meta, "shape"):
            return opaque(ctx, node, f"{name} with indices")
        return reduce(ctx, node, dims, bool(keep))
    if name in _CHANNEL_MIXING:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 1 if name == "normalize" else None)
        return _channel_mixing(ctx, node, dim)
    if name in _MATMUL:
        ctx.kind = "einsum" if name == "einsum" else "matmul"
        ctx.attrs = {"op": name, "equation": node.args[0] if name == "einsum" else None}
        return _fix_through(ctx, node, f"{name} mixes tensors along the channel axis")
    if name == "channel_shuffle":
        return _fix_through(ctx, node, "channel shuffle")
    return opaque(ctx, node, f"{op.replace('call_', '')} {name}")


@dataclass(frozen=True)
class SizeOf:
    """A python number computed from a channel axis' size (``C`` in ``B, C, H, W = x.shape``).

    ``exact`` is False once arithmetic has been applied to it.
    """

    desc: Desc
    exact: bool


def _shape_value(ctx: Ctx, node: fx.Node, name: str):
    x = ctx.value(node.args[0])
    if not isinstance(x, Desc):
        return None
    sizes = tuple(SizeOf(x, True) if i == x.axis else None for i in range(len(x.shape)))
    if name == "getattr":
        return sizes if node.args[1] == "shape" else None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return sizes if dim is None else sizes[dim % len(sizes)]


def _flat_values(ctx: Ctx, node: fx.Node):
    vals = [ctx.value(a) for a in node.args] + [ctx.value(v) for v in node.kwargs.values()]
    stack = list(vals)
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        else:
            yield v


def _size_uses(ctx: Ctx, node: fx.Node, value) -> None:
    """A channel count used in forward code must follow the width, or the group is fixed.

    ``x.reshape(B, C, H * W)`` with ``C`` read off a tensor of the same channels is fine
    (the two are coupled); the same ``C`` anywhere else (a reshape of an attention output,
    a ``torch.zeros(C)``, a slice bound) would stay the old number after slimming.
    """
    if node.op == "call_method" and node.target == "size" or _fname(node) == "getattr":
        return
    shape_args = None
    if _fname(node) in ("view", "reshape", "expand") and isinstance(value, Desc):
        rest = [ctx.value(a) for a in node.args[1:]]
        shape_args = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        if "shape" in node.kwargs or "size" in node.kwargs:
            shape_args = ctx.value(node.kwargs.get("shape", node.kwargs.get("size")))
    coupled = set()
    if shape_args is not None:
        for j, v in enumerate(shape_args):
            if isinstance(v, SizeOf) and v.exact and j == value.axis:
                ctx.state.merge(v.desc, value)
                coupled.add(id(v))
    for v in _flat_values(ctx, node):
        if isinstance(v, SizeOf) and id(v) not in coupled:
            ctx.state.fix(v.desc.segs, f"channel count used as a constant in forward code ({_fname(node)})")


def _is_tensor_meta(meta) -> bool:
    return meta is not None and hasattr(meta, "shape")


def _fix_through(ctx: Ctx, node: fx.Node, reason: str):
    ctx.fix_all([ctx.value(a) for a in node.args], reason)
    return ctx.fresh(node, node.meta.get("tensor_meta"), reason)


def _channel_mixing(ctx: Ctx, node: fx.Node, dim):
    x = ctx.value(node.args[0])
    if isinstance(x, Desc) and (dim is None or dim % len(x.shape) == x.axis):
        return _fix_through(ctx, node, f"{_fname(node)} over the channel axis")
    return passthrough(ctx, node)


def _pad(ctx: Ctx, node: fx.Node):
    x = ctx.value(node.args[0])
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    if isinstance(x, Desc) and isinstance(pad, (list, tuple)):
        if len(x.shape) - len(pad) // 2 > x.axis:
            return passthrough(ctx, node)
        return _fix_through(ctx, node, "padding of the channel axis")
    return passthrough(ctx, node)


def _arg_nodes(args):
    """Tensor arguments in call order, looking inside lists (``einsum(eq, [a, b])``, ``cat``)."""
    for a in args:
        if isinstance(a, fx.Node):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _arg_nodes(a)


def _to_desc(v, atom_group: Dict[int, int]) -> Optional[TensorDesc]:
    if isinstance(v, Desc):
        return TensorDesc(v.shape, v.axis, tuple(atom_group[s.atom] for s in v.segs), v.inner)
    if isinstance(v, (ParamRef, Plain)):
        return TensorDesc(tuple(v.shape), None)
    return None


def _one_pass(traced: Traced, cuts: Dict[str, Set[int]], autowrap: Set[Any]):
    gm = traced.gm
    ctx = Ctx(State(cuts), dict(traced.root.named_modules()), gm=gm)
    records = []
    for node in gm.graph.nodes:
        ctx.kind, ctx.attrs, ctx.module_path = "", {}, _module_path(node)
        value = _run_node(ctx, node, autowrap)
        ctx.env[node] = value
        if node.op in ("call_function", "call_method") and _is_tensor_meta(node.meta.get("tensor_meta")):
            _size_uses(ctx, node, value)
        if node.op in ("call_module", "call_function", "call_method") and _is_tensor_meta(node.meta.get("tensor_meta")):
            ins = [ctx.value(a) for a in _arg_nodes(node.args)]
            kind = ctx.kind or f"other:{_fname(node)}"
            records.append((node.name, kind, ctx.module_path, ins, value, dict(ctx.attrs)))
    return ctx.state, records


def analyze(model: nn.Module, example_input: torch.Tensor, source: str = "") -> ChannelGraph:
    """Find the channel groups of ``model`` and which of them can be searched.

    Args:
        model: any ``nn.Module`` taking one image batch (put in eval mode for tracing).
        example_input: a batch of the model's own input size.
        source: name of the model, kept for reports.

    Returns:
        The :class:`ChannelGraph`.

    Raises:
        TraceError: if the model cannot be traced (the message names the module and op).

    Example:
        >>> g = analyze(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
        >>> len(g.searchable)
        37
    """
    was_training = model.training
    model.eval()
    try:
        traced = trace(model, example_input)
    finally:
        model.train(was_training)
    try:
        from timm.models._features_fx import get_notrace_functions
        autowrap = set(get_notrace_functions())
    except ImportError:
        autowrap = set()
    cuts: Dict[str, Set[int]] = {}
    for _ in range(MAX_PASSES):
        state, records = _one_pass(traced, cuts, autowrap)
        if not state.new_cuts:
            break
    else:
        raise TraceError(f"channel analysis of {type(model).__name__} did not converge in {MAX_PASSES} passes")
    groups, atom_group = state.groups()
    ops = [OpRecord(n, kind, mod, tuple(_to_desc(v, atom_group) for v in ins),
                    _to_desc(out if not isinstance(out, (list, tuple)) else (out[0] if out else None), atom_group),
                    attrs)
           for n, kind, mod, ins, out, attrs in records]
    return ChannelGraph(groups=groups, ops=ops, input_shape=tuple(example_input.shape),
                        source=source or type(model).__name__, tracer=traced.description)
