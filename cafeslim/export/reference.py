"""The full-width reference a slimmed model must reproduce, built without slimming anything.

For an IndexSpec the reference is a copy of the *full* model in which

* every consumer ignores the removed channels: the input columns of convs and linears
  (members with role ``in``/``in_std``) are zeroed at the removed channels;
* every channel norm computes its statistics over the kept channels only: LayerNorm over the
  channel axis, GroupNorm, and the weight standardisation of timm's std-convs are patched to
  masked versions (outputs at removed channels are zero).

Nothing here gathers, reshapes or changes a module attribute: shapes stay full, removed
channels stay in the tensors and are merely ignored. So a wrong offset, ``inner``, block
pattern or kept order in the channel graph is read in the full layout here and in the
compact layout by :func:`cafeslim.export.slim.slim`, and the two models compute different
functions; ``check`` compares them (tests/export/test_mutations.py shows each such mistake
is caught).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import ChannelGraph
from ..ops.conv import std_conv_types

NORM_ROLES = ("norm", "attr")


def _removed_positions(g: Any, m: Any, removed: Sequence[int]) -> List[int]:
    """Positions on member ``m``'s axis of the group's removed channels (full layout).

    A member that holds one block's local channels (``blocks > 1``) sees the removed channels
    of the first block; ``inner`` expands each channel into its columns (flatten → Linear).
    """
    local = [c for c in removed if c < g.block_size] if m.blocks > 1 else removed
    return [m.offset + c * m.inner + j for c in local for j in range(m.inner)]


def zero_removed_inputs(model: nn.Module, graph: ChannelGraph, spec: Mapping[int, Sequence[int]]) -> nn.Module:
    """A copy of ``model`` whose consumers ignore the channels ``spec`` removes.

    Every member with role ``in``/``in_std`` (a conv/linear input axis) gets zeros at the
    removed channels; without channel norms the slimmed model computes the same function.

    Example:
        >>> ref = zero_removed_inputs(model, graph, {3: [0, 2, 5]})
    """
    zeroed = copy.deepcopy(model)
    tensors = dict(zeroed.named_parameters())
    tensors.update(dict(zeroed.named_buffers()))
    with torch.no_grad():
        for gid, kept in spec.items():
            g = graph.groups[gid]
            removed = sorted(set(range(g.channels)) - set(kept))
            if not removed:
                continue
            for m in g.members:
                if m.role not in ("in", "in_std"):
                    continue
                t = tensors[m.qualname]
                pos = _removed_positions(g, m, removed)
                t.index_fill_(m.axis, torch.tensor(pos, dtype=torch.long), 0.0)
    return zeroed


def channel_norm_modules(model: nn.Module, graph: ChannelGraph) -> Dict[str, str]:
    """Modules whose statistics run over searchable channels: name -> ``ln``/``gn``/``std``/``?``.

    ``?`` marks a norm that :func:`masked_reference` cannot patch (its equivalence is not
    verified).

    Example:
        >>> channel_norm_modules(convnext, graph)["stages.0.blocks.0.norm"]
        'ln'
    """
    mods = dict(model.named_modules())
    std_types = std_conv_types()
    # grouped std-convs have plain ``in`` members: the op record knows they standardise
    std = {op.module for op in graph.ops if op.kind == "conv" and op.attrs.get("std")}
    out: Dict[str, str] = {}
    for g in graph.searchable:
        for m in g.members:
            mod = mods.get(m.module)
            if m.role == "in_std" or (m.role == "in" and (m.module in std or isinstance(mod, std_types))):
                out[m.module] = "std" if isinstance(mod, std_types) else "?"
            elif m.role in NORM_ROLES and isinstance(mod, nn.LayerNorm):
                out[m.module] = "ln" if len(mod.normalized_shape) == 1 else "?"
            elif m.role in NORM_ROLES and isinstance(mod, nn.GroupNorm):
                out[m.module] = "gn"
            elif m.role in NORM_ROLES and mod is not None and "LayerNorm" in type(mod).__name__:
                out[m.module] = "?"
    return out


def _kept_masks(graph: ChannelGraph, spec: Mapping[int, Sequence[int]], kinds: Mapping[str, str],
                sizes: Mapping[str, int]) -> Dict[str, torch.Tensor]:
    """Per channel-norm module: a bool mask over its channel axis, True at kept channels."""
    masks: Dict[str, torch.Tensor] = {}
    for gid, kept in spec.items():
        g = graph.groups[gid]
        removed = sorted(set(range(g.channels)) - set(kept))
        if not removed:
            continue
        for m in g.members:
            want = ("in", "in_std") if kinds.get(m.module) == "std" else NORM_ROLES
            if m.module not in kinds or m.role not in want:
                continue
            mask = masks.setdefault(m.module, torch.ones(sizes[m.module], dtype=torch.bool))
            pos = _removed_positions(g, m, removed)
            mask[torch.tensor(pos, dtype=torch.long)] = False
    return masks


def _channels(mod: nn.Module, kind: str) -> int:
    if kind == "ln":
        return int(mod.normalized_shape[-1])
    if kind == "gn":
        return int(mod.num_channels)
    return int(mod.weight.shape[1])


def _masked_stats(x: torch.Tensor, keep: torch.Tensor, dims: Tuple[int, ...], eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and (biased) variance over kept entries only."""
    keep = keep.to(x.dtype)
    n = keep.expand_as(x).sum(dim=dims, keepdim=True).clamp_min(1)
    mean = (x * keep).sum(dim=dims, keepdim=True) / n
    var = ((x - mean) ** 2 * keep).sum(dim=dims, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * keep


class _Patches:
    """Replacements of F.layer_norm/group_norm/batch_norm, active inside one masked module."""

    def __init__(self) -> None:
        self.active: Optional[Tuple[str, torch.Tensor]] = None
        self.used: Dict[str, int] = {}
        self.current = ""
        self.orig: Dict[str, Callable] = {n: getattr(F, n) for n in ("layer_norm", "group_norm", "batch_norm")}

    def layer_norm(self, x, normalized_shape, weight=None, bias=None, eps=1e-5):
        if self.active is None or self.active[0] != "ln" or x.shape[-1] != self.active[1].numel():
            return self.orig["layer_norm"](x, normalized_shape, weight, bias, eps)
        self.used[self.current] = self.used.get(self.current, 0) + 1
        y = _masked_stats(x, self.active[1], (-1,), eps)
        return _affine(y, weight, bias, (-1,), self.active[1])

    def group_norm(self, x, num_groups, weight=None, bias=None, eps=1e-5):
        keep = None if self.active is None or self.active[0] != "gn" else self.active[1]
        if keep is None or x.dim() < 2 or x.shape[1] != keep.numel():
            return self.orig["group_norm"](x, num_groups, weight, bias, eps)
        self.used[self.current] = self.used.get(self.current, 0) + 1
        n, c = x.shape[:2]
        xg = x.reshape(n, num_groups, c // num_groups, -1)
        y = _masked_stats(xg, keep.view(1, num_groups, c // num_groups, 1), (2, 3), eps).reshape(x.shape)
        shape = (1, c) + (1,) * (x.dim() - 2)
        return _affine(y, weight, bias, shape, keep.view(shape))

    def batch_norm(self, x, running_mean, running_var, weight=None, bias=None, training=False,
                   momentum=0.1, eps=1e-5):
        # timm's std-convs standardise each filter with F.batch_norm over a (1, out, fan-in) view
        keep = None if self.active is None or self.active[0] != "std" else self.active[1]
        if keep is None or running_mean is not None or x.dim() != 3 or x.shape[2] % keep.numel():
            return self.orig["batch_norm"](x, running_mean, running_var, weight, bias, training, momentum, eps)
        self.used[self.current] = self.used.get(self.current, 0) + 1
        per_input = keep.repeat_interleave(x.shape[2] // keep.numel()).view(1, 1, -1)
        y = _masked_stats(x, per_input, (0, 2), eps)
        return _affine(y, weight, bias, (1, -1, 1), per_input)


def _affine(y: torch.Tensor, weight, bias, shape: Tuple[int, ...], keep: torch.Tensor) -> torch.Tensor:
    """Apply the norm's affine parameters (viewed as ``shape``), then zero the removed channels."""
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y * keep.to(y.dtype)


@contextmanager
def masked_norms(model: nn.Module, masks: Mapping[str, Tuple[str, torch.Tensor]]) -> Iterator[_Patches]:
    """While active, the named modules of ``model`` compute norm statistics over kept channels.

    Args:
        model: the model whose modules are patched (hooks are removed on exit).
        masks: module name -> (kind ``ln``/``gn``/``std``, bool mask over its channel axis).

    Yields:
        The patch object; ``.used`` counts, per module, the masked calls that happened.

    Example:
        >>> with masked_norms(ref, {"norm": ("ln", keep)}) as p:
        ...     out = ref(x)
    """
    patches = _Patches()
    handles = []
    mods = dict(model.named_modules())
    for name, (kind, keep) in masks.items():
        def pre(_mod, _args, name=name, kind=kind, keep=keep):
            patches.active, patches.current = (kind, keep), name

        def post(_mod, _args, _out):
            patches.active, patches.current = None, ""

        handles.append(mods[name].register_forward_pre_hook(pre))
        handles.append(mods[name].register_forward_hook(post))
    for n in patches.orig:
        setattr(F, n, getattr(patches, n))
    try:
        yield patches
    finally:
        for n, fn in patches.orig.items():
            setattr(F, n, fn)
        for h in handles:
            h.remove()


def masked_reference(model: nn.Module, graph: ChannelGraph, spec: Mapping[int, Sequence[int]],
                     x: torch.Tensor) -> Tuple[object, List[str]]:
    """Output of the full-width reference for ``spec`` on ``x`` (see the module docstring).

    Returns:
        ``(output, unpatched)``: ``unpatched`` names channel-norm modules the reference could
        not mask (an unknown norm type, or a norm whose masked function never ran); where it
        is not empty the output is not a valid reference.

    Example:
        >>> ref, unpatched = masked_reference(model, graph, spec, x)
    """
    ref = zero_removed_inputs(model, graph, spec).eval()
    kinds = channel_norm_modules(ref, graph)
    mods = dict(ref.named_modules())
    known = {n: k for n, k in kinds.items() if k != "?"}
    masks = _kept_masks(graph, spec, known, {n: _channels(mods[n], k) for n, k in known.items()})
    unpatched = sorted(n for n, k in kinds.items() if k == "?")
    with torch.no_grad(), masked_norms(ref, {n: (known[n], m) for n, m in masks.items()}) as patches:
        out = ref(x)
    unpatched += sorted(n for n in masks if not patches.used.get(n))
    return out, unpatched
