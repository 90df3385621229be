"""Physically slim a model from an IndexSpec: gather kept channels, fix module attributes.

The same three steps serve two callers. The supernet runs a sub-network without copying the
model: :func:`gather_indices` once per spec, :func:`sliced_state` for
``torch.func.functional_call`` and :func:`patched_attributes` around the call. Export builds a
real smaller model with :func:`slim`, which runs exactly those steps on a deep copy — so what
the search measured is what the user gets (DESIGN.md, "One currency").

Index semantics (the contract with graph analysis): a :class:`~cafeslim.graph.channel_graph.Member`
puts channel ``c`` of its group at entries ``offset + c*inner + [0, inner)`` of its tensor's
``axis``; with ``blocks > 1`` the axis only holds one block's local channels, so the kept
local indices ``[i for i in kept if i < block_size]`` apply there. Entries that no changed
group covers are kept.
"""

from __future__ import annotations

import copy
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import SpecError
from ..graph.channel_graph import ChannelGraph, Member

Indices = Dict[str, List[Tuple[int, torch.Tensor]]]
"""Tensor qualname -> ``[(axis, sorted LongTensor of kept entries), ...]`` in axis order."""

Shapes = Union[nn.Module, Mapping[str, Sequence[int]]]


# --------------------------------------------------------------------------- plan (per graph)

@dataclass
class _Plan:
    """Graph-only bookkeeping, built once per graph so that per-spec work is just numpy."""

    tensor_members: Dict[int, List[Tuple[Tuple[str, int], Member]]] = field(default_factory=dict)
    attr_members: Dict[int, List[Member]] = field(default_factory=dict)
    # Largest entry any group (fixed ones included) reaches on a tensor axis: the axis size
    # when no model is at hand.
    extent: Dict[Tuple[str, int], int] = field(default_factory=dict)
    fingerprint: Tuple[int, int] = (0, 0)


_PLANS: Dict[int, Tuple["weakref.ref[ChannelGraph]", _Plan]] = {}


def _fingerprint(graph: ChannelGraph) -> Tuple[int, int]:
    return len(graph.groups), sum(len(g.members) for g in graph.groups)


def _plan(graph: ChannelGraph) -> _Plan:
    key = id(graph)
    hit = _PLANS.get(key)
    # The fingerprint guards against a graph edited after its first use (cheap, not perfect).
    if hit is not None and hit[0]() is graph and hit[1].fingerprint == _fingerprint(graph):
        return hit[1]
    plan = _Plan(fingerprint=_fingerprint(graph))
    for g in graph.groups:
        for m in g.members:
            if m.role == "attr":
                plan.attr_members.setdefault(g.id, []).append(m)
                continue
            if m.axis < 0 or m.inner < 1 or m.blocks < 1 or m.offset < 0:
                raise SpecError(f"group {g.id}: malformed member {m}")
            slot = (m.qualname, m.axis)
            span = g.block_size if m.blocks > 1 else g.channels
            plan.extent[slot] = max(plan.extent.get(slot, 0), m.offset + span * m.inner)
            plan.tensor_members.setdefault(g.id, []).append((slot, m))
    _PLANS[key] = (weakref.ref(graph, lambda _r, k=key: _PLANS.pop(k, None)), plan)
    return plan


def _removed(graph: ChannelGraph, spec: Mapping[int, Sequence[int]]) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
    """Per changed group: removed channels, and removed local channels of one block."""
    out = {}
    for gid, kept in spec.items():
        g = graph.groups[gid]
        if len(kept) == g.channels:
            continue
        k = np.asarray(kept, dtype=np.int64)
        removed = np.setdiff1d(np.arange(g.channels), k, assume_unique=True)
        if g.blocks > 1:
            local = np.setdiff1d(np.arange(g.block_size), k[k < g.block_size], assume_unique=True)
        else:
            local = removed
        out[gid] = (removed, local)
    return out


def _positions(m: Member, removed: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    chans = removed[1] if m.blocks > 1 else removed[0]
    if m.inner == 1:
        return chans + m.offset
    return (m.offset + chans[:, None] * m.inner + np.arange(m.inner)).ravel()


# --------------------------------------------------------------------------- tensors

def _owner(model: nn.Module, qualname: str) -> Tuple[nn.Module, str]:
    modname, _, name = qualname.rpartition(".")
    try:
        return model.get_submodule(modname), name
    except AttributeError:
        raise SpecError(f"the graph names module '{modname}', which the model does not have") from None


def _tensor(model: nn.Module, qualname: str) -> torch.Tensor:
    mod, name = _owner(model, qualname)
    t = mod._parameters.get(name)
    if t is None:
        t = mod._buffers.get(name)
    if t is None:
        t = getattr(mod, name, None)
    if not isinstance(t, torch.Tensor):
        raise SpecError(f"the graph names tensor '{qualname}', which the model does not have")
    return t


def _shape_of(shapes: Shapes, qualname: str) -> Sequence[int]:
    if isinstance(shapes, nn.Module):
        return tuple(_tensor(shapes, qualname).shape)
    try:
        return tuple(shapes[qualname])
    except KeyError:
        raise SpecError(f"no shape given for tensor '{qualname}'") from None


def gather_indices(
    graph: ChannelGraph,
    spec: Mapping[int, Sequence[int]],
    *,
    shapes: Optional[Shapes] = None,
    validate: bool = True,
    device: Optional[torch.device] = None,
) -> Indices:
    """Kept entries of every tensor axis that a spec changes.

    Compute it once per spec and hand it to :func:`sliced_state`,
    :func:`module_attributes` and :func:`slim`. Graph bookkeeping is cached per graph, so a
    call costs about a millisecond on resnet50.

    Args:
        graph: the model's channel graph.
        spec: searchable group id -> kept channel indices.
        shapes: the model (or ``qualname -> shape``) to size each axis exactly; without it an
            axis ends where the graph's last member on it ends, and :func:`sliced_state` adds
            any uncovered tail it finds on the real tensor.
        validate: run :meth:`ChannelGraph.validate_spec` first (skip only for specs that
            came from the graph's own search space).
        device: where to put the index tensors (the supernet's device avoids a copy per call).

    Returns:
        ``{qualname: [(axis, LongTensor of kept entries, sorted), ...]}`` for changed tensors.
        Tensors may be shared between entries: treat them as read-only.

    Raises:
        SpecError: invalid spec, or a member reaching past its tensor's axis.

    Example:
        >>> idx = gather_indices(graph, {0: [0, 2, 3]})
        >>> idx["conv1.weight"]
        [(0, tensor([0, 2, 3]))]
    """
    if validate:
        spec = graph.validate_spec(spec)
    plan = _plan(graph)
    removed = _removed(graph, spec)
    slots: Dict[Tuple[str, int], List[Tuple[Member, int]]] = {}
    for gid in removed:
        for slot, m in plan.tensor_members.get(gid, ()):
            slots.setdefault(slot, []).append((m, gid))
    out: Indices = {}
    whole: Dict[int, torch.Tensor] = {}  # per group: its kept list as a tensor, shared
    for (qualname, axis), members in slots.items():
        size = plan.extent[(qualname, axis)]
        if shapes is not None:
            shape = _shape_of(shapes, qualname)
            if axis >= len(shape) or shape[axis] < size:
                raise SpecError(
                    f"the graph puts channels at axis {axis} up to {size} of '{qualname}', "
                    f"whose shape is {tuple(shape)}")
            size = shape[axis]
        m, gid = members[0]
        if len(members) == 1 and m.offset == 0 and m.inner == 1 and m.blocks == 1 \
                and size == graph.groups[gid].channels:
            # The common case (a plain conv/BN axis holding exactly one group) needs no mask.
            if gid not in whole:
                whole[gid] = torch.as_tensor(spec[gid], dtype=torch.long, device=device)
            out.setdefault(qualname, []).append((axis, whole[gid]))
            continue
        keep = np.ones(size, dtype=bool)
        for m, gid in members:
            keep[_positions(m, removed[gid])] = False
        idx = torch.from_numpy(np.flatnonzero(keep))
        if device is not None:
            idx = idx.to(device)
        out.setdefault(qualname, []).append((axis, idx))
    for axes in out.values():
        axes.sort(key=lambda a: a[0])
    return out


def _with_tail(idx: torch.Tensor, size: int, end: int) -> torch.Tensor:
    """Add the entries past the graph's last member that indices built without shapes miss."""
    # The size test comes first: it is free, while reading idx[-1] syncs a GPU.
    if size > end and (idx.numel() == 0 or int(idx[-1]) < end):
        return torch.cat([idx, torch.arange(end, size, device=idx.device)])
    return idx


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
    extent = _plan(graph).extent
    out: Dict[str, torch.Tensor] = {}
    for qualname, axes in indices.items():
        t = _tensor(model, qualname)
        for axis, idx in axes:
            if axis >= t.dim():
                raise SpecError(f"the graph slices axis {axis} of '{qualname}', shape {tuple(t.shape)}")
            idx = _with_tail(idx, t.shape[axis], extent.get((qualname, axis), 0))
            if idx.device != t.device:
                idx = idx.to(t.device)
            t = t.index_select(axis, idx)
        out[qualname] = t
    return out


# --------------------------------------------------------------------------- module attributes

def _conv_attrs(mod: nn.modules.conv._ConvNd, w: Sequence[int]) -> Dict[str, Any]:
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


def _is_batchnorm_like(mod: nn.Module) -> bool:
    # A model's root often has an int ``num_features`` too; only norms count.
    if isinstance(mod, nn.modules.batchnorm._NormBase):
        return True
    return isinstance(getattr(mod, "num_features", None), int) and (
        "running_mean" in mod._buffers or "Norm" in type(mod).__name__)


def _type_attrs(mod: nn.Module, shape: Any) -> Dict[str, Any]:
    """Attributes of a known module type, from its tensors' (sliced) shapes."""
    if isinstance(mod, nn.modules.conv._ConvNd):
        return _conv_attrs(mod, shape("weight"))
    if isinstance(mod, nn.Linear):
        w = shape("weight")
        return {"in_features": w[1], "out_features": w[0]}
    if isinstance(mod, nn.LayerNorm) or isinstance(getattr(mod, "normalized_shape", None), (tuple, list)):
        # nn.RMSNorm and timm's RmsNorm/SimpleNorm are no LayerNorm subclasses but share this.
        w = shape("weight") or shape("bias")
        return {"normalized_shape": type(mod.normalized_shape)(w)} if w else {}
    if isinstance(mod, nn.GroupNorm):
        w = shape("weight") or shape("bias")
        if w and w[0] % mod.num_groups:
            raise SpecError(f"GroupNorm keeps {w[0]} channels, not a multiple of {mod.num_groups} groups")
        return {"num_channels": w[0]} if w else {}
    if isinstance(mod, nn.PReLU):
        w = shape("weight")
        return {"num_parameters": int(np.prod(w))} if w and mod.num_parameters > 1 else {}
    # BatchNorm/InstanceNorm and look-alikes such as FrozenBatchNorm2d, which only share the
    # attribute name and the buffers.
    if _is_batchnorm_like(mod):
        for name in ("weight", "bias", "running_mean", "running_var"):
            s = shape(name)
            if s:
                return {"num_features": s[0]}
    return {}


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
    extent = _plan(graph).extent
    new_shapes: Dict[str, Dict[str, Tuple[int, ...]]] = {}
    for qualname, axes in indices.items():
        modname, _, name = qualname.rpartition(".")
        shape = list(_tensor(model, qualname).shape)
        for axis, idx in axes:
            if axis >= len(shape):
                raise SpecError(f"the graph slices axis {axis} of '{qualname}', shape {tuple(shape)}")
            shape[axis] = _with_tail(idx, shape[axis], extent.get((qualname, axis), 0)).numel()
        new_shapes.setdefault(modname, {})[name] = tuple(shape)

    out: Dict[str, Dict[str, Any]] = {}
    for modname, sliced in new_shapes.items():
        mod = model.get_submodule(modname)

        def shape(name: str, _m: nn.Module = mod, _s: Dict[str, Tuple[int, ...]] = sliced):
            if name in _s:
                return _s[name]
            t = getattr(_m, name, None)
            return tuple(t.shape) if isinstance(t, torch.Tensor) else None

        changed = {k: v for k, v in _type_attrs(mod, shape).items() if getattr(mod, k, None) != v}
        if changed:
            out[modname] = changed

    plan = _plan(graph)
    removed = _removed(graph, {k: v for k, v in spec.items() if k in plan.attr_members})
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

def _channel_count(mod: nn.Module) -> Optional[int]:
    """The per-channel count that a module's channel-wise tensors must have on axis 0."""
    if isinstance(mod, nn.modules.conv._ConvNd):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    if isinstance(mod, nn.LayerNorm) or isinstance(getattr(mod, "normalized_shape", None), (tuple, list)):
        return mod.normalized_shape[0] if mod.normalized_shape else None
    if _is_batchnorm_like(mod):
        return mod.num_features
    return None


def _check_module(modname: str, old: nn.Module, new: nn.Module) -> None:
    """Catch a graph that forgot a member (a bias, BN statistics, a std-conv ``gain``): every
    tensor of the module that was channel-wise on axis 0 must follow the new channel count."""
    before, after = _channel_count(old), _channel_count(new)
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
    originals = {q: (_owner(new, q), _tensor(new, q)) for q in state}  # before any replacement
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
