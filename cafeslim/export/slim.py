"""Physically slim a model from an IndexSpec: gather kept channels, fix module attributes.

The same three steps serve two callers. The supernet runs a sub-network without copying the
model: :func:`gather_indices` once per spec, :func:`sliced_state` for
``torch.func.functional_call`` and :func:`patched_attributes` around the call. Export builds a
real smaller model with :func:`slim`, which runs exactly those steps on a deep copy — so what
the search measured is what the user gets (DESIGN.md, "One currency").

Index semantics are those of :mod:`cafeslim.graph.indices` (``gather_indices`` lives there,
next to ``IndexSpec``, and is re-exported here). The module attributes a slimmed module needs
come from its op handler (:meth:`cafeslim.ops.OpHandler.slim_attrs`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import SpecError
from ..graph.channel_graph import ChannelGraph
from ..graph.indices import (Indices, gather_indices, owner_of, plan_of, removed_channels, tensor_of,
                             with_tail)
from ..ops.registry import module_handler

__all__ = ["Indices", "gather_indices", "sliced_state", "module_attributes", "patched_attributes", "slim"]


def sliced_state(
    model: nn.Module,
    graph: ChannelGraph,
    spec: Mapping[int, Sequence[int]],
    indices: Optional[Indices] = None,
) -> Dict[str, torch.Tensor]:
    """Sliced copies of every parameter and buffer that a spec changes.

    ``index_select`` keeps the autograd link to the full tensors, so the result can go straight
    into ``torch.func.functional_call`` and gradients land in the shared weights.

    Args:
        model: the full model (not modified).
        graph: its channel graph.
        spec: searchable group id -> kept channel indices.
        indices: the spec's :func:`gather_indices` result, to skip recomputing it.

    Returns:
        ``{qualname: sliced tensor}`` for changed tensors only.

    Example:
        >>> state = sliced_state(model, graph, spec, idx)
        >>> with patched_attributes(model, module_attributes(model, graph, spec, idx)):
        ...     y = torch.func.functional_call(model, state, (x,))
    """
    if indices is None:
        indices = gather_indices(graph, spec, shapes=model)
    extent = plan_of(graph).extent
    out: Dict[str, torch.Tensor] = {}
    for qualname, axes in indices.items():
        t = tensor_of(model, qualname)
        for axis, idx in axes:
            if axis >= t.dim():
                raise SpecError(f"the graph slices axis {axis} of '{qualname}', shape {tuple(t.shape)}")
            idx = with_tail(idx, t.shape[axis], extent.get((qualname, axis), 0))
            if idx.device != t.device:
                idx = idx.to(t.device)
            t = t.index_select(axis, idx)
        out[qualname] = t
    return out


# --------------------------------------------------------------------------- module attributes

def module_attributes(
    model: nn.Module,
    graph: ChannelGraph,
    spec: Mapping[int, Sequence[int]],
    indices: Optional[Indices] = None,
) -> Dict[str, Dict[str, Any]]:
    """Module attributes that a sliced model needs, derived from the sliced shapes.

    Conv ``in_channels``/``out_channels`` (and ``groups`` of depthwise convs), Linear
    ``in_features``/``out_features``, BatchNorm ``num_features``, LayerNorm ``normalized_shape``,
    GroupNorm ``num_channels``, PReLU ``num_parameters``; subclasses (timm) included. Members
    with role ``attr`` (e.g. ``normalized_shape`` of a LayerNorm without affine parameters,
    split sizes) shrink entry ``axis`` of that attribute (or the int itself) by the removed
    channels.

    Returns:
        ``{module qualname: {attribute: new value}}``, only for attributes that change.

    Raises:
        SpecError: a width that the module cannot take (e.g. not a multiple of its groups).

    Example:
        >>> module_attributes(model, graph, {0: [0, 1]})
        {'conv1': {'out_channels': 2}, 'bn1': {'num_features': 2}, 'conv2': {'in_channels': 2}}
    """
    if indices is None:
        indices = gather_indices(graph, spec, shapes=model)
    extent = plan_of(graph).extent
    new_shapes: Dict[str, Dict[str, Tuple[int, ...]]] = {}
    for qualname, axes in indices.items():
        modname, _, name = qualname.rpartition(".")
        shape = list(tensor_of(model, qualname).shape)
        for axis, idx in axes:
            if axis >= len(shape):
                raise SpecError(f"the graph slices axis {axis} of '{qualname}', shape {tuple(shape)}")
            shape[axis] = with_tail(idx, shape[axis], extent.get((qualname, axis), 0)).numel()
        new_shapes.setdefault(modname, {})[name] = tuple(shape)

    out: Dict[str, Dict[str, Any]] = {}
    for modname, sliced in new_shapes.items():
        mod = model.get_submodule(modname)

        def shape(name: str, _m: nn.Module = mod, _s: Dict[str, Tuple[int, ...]] = sliced):
            if name in _s:
                return _s[name]
            t = getattr(_m, name, None)
            return tuple(t.shape) if isinstance(t, torch.Tensor) else None

        handler = module_handler(mod)
        new_attrs = handler.slim_attrs(mod, shape) if handler is not None else {}
        changed = {k: v for k, v in new_attrs.items() if getattr(mod, k, None) != v}
        if changed:
            out[modname] = changed

    plan = plan_of(graph)
    removed = removed_channels(graph, {k: v for k, v in spec.items() if k in plan.attr_members})
    for gid, rem in removed.items():
        for m in plan.attr_members[gid]:
            mod = model.get_submodule(m.module)
            attrs = out.setdefault(m.module, {})
            # Several groups may shrink one attribute (a split size spanning two groups).
            value = attrs.get(m.name, getattr(mod, m.name, None))
            cut = len(rem[1] if m.blocks > 1 else rem[0]) * m.inner
            if isinstance(value, int):
                value = value - cut
            elif isinstance(value, (tuple, list)) and -len(value) <= m.axis < len(value):
                seq = list(value)
                seq[m.axis] -= cut
                value = type(value)(seq)
            else:
                raise SpecError(f"cannot shrink attribute '{m.name}' of '{m.module}' (value {value!r})")
            attrs[m.name] = value
    return {k: v for k, v in out.items() if v}


@contextmanager
def patched_attributes(model: nn.Module, attrs: Mapping[str, Mapping[str, Any]]) -> Iterator[nn.Module]:
    """Temporarily set module attributes (from :func:`module_attributes`); restore on exit.

    Example:
        >>> with patched_attributes(model, {"bn1": {"num_features": 2}}):
        ...     y = torch.func.functional_call(model, state, (x,))
    """
    saved: List[Tuple[nn.Module, str, Any]] = []
    try:
        for modname, values in attrs.items():
            mod = model.get_submodule(modname)
            for name, value in values.items():
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, value)
        yield model
    finally:
        for mod, name, value in reversed(saved):
            setattr(mod, name, value)


# --------------------------------------------------------------------------- slim

def _check_module(modname: str, old: nn.Module, new: nn.Module) -> None:
    """Catch a graph that forgot a member (a bias, BN statistics, a std-conv ``gain``): every
    tensor of the module that was channel-wise on axis 0 must follow the new channel count."""
    handler = module_handler(old)
    if handler is None:
        return
    before, after = handler.channel_count(old), handler.channel_count(new)
    if before is None or before == after:
        return
    skip = {"weight"} if getattr(new, "transposed", False) else set()  # (in, out/groups, ...)
    for name, t in (*old._parameters.items(), *old._buffers.items()):
        if name in skip or t is None or t.dim() == 0 or t.shape[0] != before:
            continue
        now = getattr(new, name)
        if now.shape[0] != after:
            raise SpecError(
                f"'{modname}' now has {after} channels but its '{name}' still has {now.shape[0]} "
                f"entries: the channel graph misses a member for it")


def slim(model: nn.Module, graph: ChannelGraph, spec: Mapping[int, Sequence[int]]) -> nn.Module:
    """A physically smaller copy of ``model`` that keeps ``spec``'s channels.

    The copy keeps the user's module classes and attributes; every changed parameter becomes a
    new ``nn.Parameter`` (same ``requires_grad``), buffers are replaced in place (persistence
    kept), tied tensors stay tied. The original is not modified.

    Args:
        model: the full model.
        graph: its channel graph (from :func:`cafeslim.graph.analyze`).
        spec: searchable group id -> sorted kept channel indices.

    Raises:
        SpecError: spec does not fit the graph, or the graph does not fit the model.

    Example:
        >>> small = slim(model, graph, graph.prefix_spec({g.id: g.channels // 2 for g in graph.searchable}))
        >>> small(x).shape == model(x).shape
        True
    """
    spec = graph.validate_spec(spec)
    indices = gather_indices(graph, spec, shapes=model, validate=False)
    attrs = module_attributes(model, graph, spec, indices)
    new = copy.deepcopy(model)
    with torch.no_grad():
        state = sliced_state(new, graph, spec, indices)

    # Every place a tensor is registered, so that tied weights are replaced together.
    owners: Dict[int, List[Tuple[nn.Module, str]]] = {}
    for mod in new.modules():
        for store in (mod._parameters, mod._buffers):
            for name, t in store.items():
                if t is not None:
                    owners.setdefault(id(t), []).append((mod, name))
    originals = {q: (owner_of(new, q), tensor_of(new, q)) for q in state}  # before any replacement
    replaced: Dict[int, torch.Tensor] = {}
    for qualname, t in state.items():
        (mod, name), old = originals[qualname]
        if id(old) in replaced:
            if replaced[id(old)].shape != t.shape or not torch.equal(replaced[id(old)], t):
                raise SpecError(f"'{qualname}' is tied to another tensor that the spec slices differently")
            continue
        if isinstance(old, nn.Parameter):
            t = nn.Parameter(t.detach().clone(), requires_grad=old.requires_grad)
        else:
            t = t.detach().clone()
        replaced[id(old)] = t
        for owner, oname in owners.get(id(old), [(mod, name)]):
            if oname in owner._parameters:
                owner._parameters[oname] = t
            elif oname in owner._buffers:
                owner._buffers[oname] = t
            else:
                setattr(owner, oname, t)

    for modname, values in attrs.items():
        mod = new.get_submodule(modname)
        for name, value in values.items():
            setattr(mod, name, value)
    for modname in {q.rpartition(".")[0] for q in state} | set(attrs):
        _check_module(modname, model.get_submodule(modname), new.get_submodule(modname))
    return new
