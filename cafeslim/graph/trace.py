"""Tracing a model into a torch.fx graph with concrete shapes on every node.

Tracing is symbolic (``torch.fx``), with timm's registered no-trace functions kept as single
calls. When symbolic tracing fails inside a submodule (Python control flow on a traced value,
say), that submodule becomes a leaf and tracing is retried: cafeslim then treats it as an
opaque op whose channels stay fixed, instead of giving up on the whole model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import TraceError
from ..ops import registry

MAX_LEAF_FALLBACKS = 30

def _timm_notrace() -> Tuple:
    try:
        from timm.models._features_fx import get_notrace_functions
    except ImportError:  # timm missing or too old: plain fx
        return ()
    return tuple(get_notrace_functions())


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Set[str], autowrap: Tuple):
        super().__init__(autowrap_functions=autowrap)
        self.extra_leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # Handlers say which modules stay single calls (BN-likes, weight-standardised convs,
        # timm's no-trace convs).
        if qualname in self.extra_leaves or registry.is_leaf(m):
            return True
        return super().is_leaf_module(m, qualname)


@dataclass
class Traced:
    """A traced model: the GraphModule (shapes in ``node.meta['tensor_meta']``) and how."""

    gm: fx.GraphModule
    root: nn.Module
    leaves: List[str] = field(default_factory=list)
    attempts: List[str] = field(default_factory=list)
    leaf_errors: Dict[str, str] = field(default_factory=dict)  # leaf -> why fx failed in it

    @property
    def description(self) -> str:
        return "fx" + (f" (opaque leaves: {', '.join(self.leaves)})" if self.leaves else "")


def _concrete_args(model: nn.Module) -> Dict[str, object]:
    """Keep every forward argument but the first at its default (timm's attn_mask, ...)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TraceError(
                f"{type(model).__name__}.forward needs argument '{p.name}' besides the image; "
                "cafeslim traces models that take one image tensor")
        out[p.name] = p.default
    return out


def _failing_module(tracer: _Tracer) -> Optional[str]:
    stack = getattr(tracer, "module_stack", None) or {}
    names = [k for k in stack.keys() if k]
    return names[-1] if names else None


def trace(model: nn.Module, example_input: torch.Tensor) -> Traced:
    """Symbolically trace ``model`` and propagate the example input's shapes.

    Args:
        model: the model, in eval mode.
        example_input: one input batch of the model's own size.

    Returns:
        A :class:`Traced` whose graph nodes carry ``tensor_meta``.

    Raises:
        TraceError: naming the module and the op where tracing failed and the fallbacks tried.

    Example:
        >>> traced = trace(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224))
    """
    autowrap = _timm_notrace()
    concrete = _concrete_args(model)
    leaves: List[str] = []
    attempts: List[str] = []
    errors: Dict[str, str] = {}
    last_error = ""
    for _ in range(MAX_LEAF_FALLBACKS + 1):
        tracer = _Tracer(set(leaves), autowrap)
        try:
            graph = tracer.trace(model, concrete_args=concrete or None)
        except Exception as exc:  # fx raises many kinds; all mean "not traceable here"
            where = _failing_module(tracer)
            last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if where is None or where in leaves:
                attempts.append(f"fx failed at {where or 'the root module'}: {last_error}")
                break
            attempts.append(f"made '{where}' ({type(model.get_submodule(where)).__name__}) an opaque leaf")
            leaves.append(where)
            errors[where] = last_error
            continue
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        _propagate_shapes(gm, example_input, autowrap)
        return Traced(gm, model, leaves, attempts, errors)
    mod = f"module '{leaves[-1]}'" if leaves else "the root module"
    raise TraceError(
        f"cannot trace {type(model).__name__}: {last_error} (in {mod}); tried: "
        + "; ".join(attempts or ["fx symbolic tracing with timm's no-trace functions"]))


class _ShapeProp(ShapeProp):
    """ShapeProp that also notes when a wrapped (untraced) function returned an input as is.

    timm wraps helpers such as ``resample_abs_pos_embed`` that return their input unchanged
    at the model's own input size; knowing that keeps a ViT's embedding width searchable.
    """

    def __init__(self, gm: fx.GraphModule, autowrap: Tuple, fake_mode=None):
        super().__init__(gm, fake_mode=fake_mode)
        self.autowrap = set(autowrap)

    def call_function(self, target, args, kwargs):
        # fx hands list arguments over as immutable lists; a wrapped helper that fills one
        # in place (torchvision's video Swin ``_get_window_and_shift_size``) gets a copy.
        return super().call_function(target, _mutable(args), _mutable(kwargs))

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if n.op == "call_function" and n.target in self.autowrap and isinstance(result, torch.Tensor):
            for i, a in enumerate(n.args):
                if isinstance(a, fx.Node):
                    v = self.env.get(a)
                    if v is result:
                        n.meta["identity_of"] = i
                        break
        return result


def _mutable(value):
    from torch.fx.immutable_collections import immutable_dict, immutable_list

    if isinstance(value, immutable_list):
        return [_mutable(v) for v in value]
    if isinstance(value, immutable_dict):
        return {k: _mutable(v) for k, v in value.items()}
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_mutable(v) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: _mutable(v) for k, v in value.items()}
    return value


def _propagate_shapes(gm: fx.GraphModule, example_input: torch.Tensor, autowrap: Tuple) -> None:
    # Fake tensors give every shape without computing a single conv; a model whose graph
    # needs real values (data-dependent ops) is propagated for real instead.
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with torch.no_grad():
            _ShapeProp(gm, autowrap, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(example_input)
        return
    except Exception:
        pass
    try:
        with torch.no_grad():
            _ShapeProp(gm, autowrap).propagate(example_input)
    except Exception as exc:
        node = _current_node(exc)
        raise TraceError(
            f"the traced graph of {gm.__class__.__name__} fails on the example input of shape "
            f"{tuple(example_input.shape)}{node}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _current_node(exc: Exception) -> str:
    for note in getattr(exc, "__notes__", []) or []:
        if "node" in note.lower():
            return f" ({note.strip().splitlines()[0]})"
    return ""
