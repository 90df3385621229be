"""``analyze(model, example_input) -> ChannelGraph``: the channel groups of any traced model.

The pass walks the fx graph once, applying the rules of ``rules.py``, ``layers.py`` and
``structure.py`` to every node. Cuts discovered on the way (a split in the middle of a
conv's outputs) are fed back and the pass is repeated until no new cut appears; the last
pass's union-find classes are the groups.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Set

import torch
import torch.fx as fx
from torch import nn

from ..errors import TraceError
from ..ops import registry
from ..ops.registry import OpKind
from .channel_graph import ChannelGraph, OpRecord, TensorDesc
from .layers import fname
from .rules import Ctx, ParamRef, Plain, opaque
from .sizes import non_tensor_value, size_uses
from .state import Desc, State
from .trace import Traced, trace

MAX_PASSES = 50


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "") if stack else ""


def _is_tensor_meta(meta) -> bool:
    return meta is not None and hasattr(meta, "shape")


def _run_node(ctx: Ctx, node: fx.Node, autowrap: Set[Any]):
    """The value of one node: graph plumbing here, every op's rule from its registered handler."""
    op = node.op
    if op == "placeholder":
        return ctx.fresh(node, node.meta.get("tensor_meta"), "model input")
    if op == "get_attr":
        obj = ctx.gm_attr(node.target)
        if isinstance(obj, torch.Tensor):
            module, _, pname = str(node.target).rpartition(".")
            return ParamRef(module, pname, tuple(obj.shape), tuple(range(obj.dim())))
        return obj
    if op == "output":
        ctx.fix_all(ctx.value(node.args[0]), ctx.output_reason)
        return None
    if op == "call_module":
        mod = ctx.modules[node.target]
        handler = registry.module_handler(mod)
        out = handler.trace(ctx, node, mod) if handler is not None else None
        if out is not None:
            return out
        # A module fx could not trace says why, so the user knows what to change or register.
        why = ctx.untraceable.get(str(node.target))
        return opaque(ctx, node, f"module {type(mod).__name__}"
                      + (f", which fx cannot trace ({why})" if why else ""))
    # call_function / call_method
    name, meta = fname(node), node.meta.get("tensor_meta")
    handler = registry.function_handler(name)
    if handler is not None and not handler.tensor_only:
        return handler.trace(ctx, node)
    if not (_is_tensor_meta(meta) or isinstance(meta, (list, tuple))):
        return non_tensor_value(ctx, node)
    if node.target in autowrap:
        ident = node.meta.get("identity_of")
        if ident is not None:
            return ctx.value(node.args[ident])
        return opaque(ctx, node, f"function {name}")
    out = handler.trace(ctx, node) if handler is not None else None
    return out if out is not None else opaque(ctx, node, f"{op.replace('call_', '')} {name}")


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


def _one_pass(traced: Traced, cuts: Dict[str, Set[int]], autowrap: Set[Any],
              output_reason: str = "model output"):
    gm = traced.gm
    ctx = Ctx(State(cuts), dict(traced.root.named_modules()), gm=gm, output_reason=output_reason,
              untraceable=traced.leaf_errors)
    records = []
    for node in gm.graph.nodes:
        ctx.kind, ctx.attrs, ctx.op_name, ctx.module_path = "", {}, "", _module_path(node)
        value = _run_node(ctx, node, autowrap)
        ctx.env[node] = value
        if node.op not in ("call_module", "call_function", "call_method") or \
                not _is_tensor_meta(node.meta.get("tensor_meta")):
            continue
        if node.op != "call_module":
            handler = registry.function_handler(fname(node))
            if handler is None or handler.uses_sizes:
                shape_args = handler.shape_args(ctx, node) if handler is not None else None
                size_uses(ctx, node, value, shape_args, fname(node))
        ins = [ctx.value(a) for a in _arg_nodes(node.args)]
        kind = ctx.kind or OpKind.OTHER
        records.append((node.name, kind, ctx.op_name or fname(node), ctx.module_path, ins, value,
                        dict(ctx.attrs)))
    return ctx.state, records


def analyze(model: nn.Module, example_input: torch.Tensor, source: str = "",
            output_reason: str = "model output") -> ChannelGraph:
    """Find the channel groups of ``model`` and which of them can be searched.

    Args:
        model: any ``nn.Module`` taking one image batch (put in eval mode for tracing); its
            output may be a tensor or a dict/list/tuple of tensors.
        example_input: a batch of the model's own input size.
        source: name of the model, kept for reports.
        output_reason: why the channels of the outputs are fixed (a traced part of a larger
            model: the contract of the modules that read them, ``ModelInfo.output_reason``).

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
        state, records = _one_pass(traced, cuts, autowrap, output_reason)
        if not state.new_cuts:
            break
    else:
        raise TraceError(f"channel analysis of {type(model).__name__} did not converge in {MAX_PASSES} passes")
    groups, atom_group = state.groups()
    ops = [OpRecord(n, kind, mod, tuple(_to_desc(v, atom_group) for v in ins),
                    _to_desc(out if not isinstance(out, (list, tuple)) else (out[0] if out else None), atom_group),
                    attrs, name)
           for n, kind, name, mod, ins, out, attrs in records]
    return ChannelGraph(groups=groups, ops=ops, input_shape=tuple(example_input.shape),
                        source=source or type(model).__name__, tracer=traced.description)
