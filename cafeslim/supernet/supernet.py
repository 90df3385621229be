"""The locally free supernet: run any sub-network of a model by gathering its channels.

:class:`Supernet` wraps the *original* model; its parameters are the shared supernet weights
and its ``state_dict()`` is the model's own (no ``model.`` prefix), so checkpoints stay plain.
``set_subnet(spec)`` selects an :data:`~cafeslim.graph.IndexSpec`; ``forward`` then calls the
model through ``torch.func.functional_call`` with the spec's sliced parameters and inside
``patched_attributes`` (depthwise ``groups``, ``normalized_shape``, split sizes, ...), so the
compute shrinks with the width — nothing is masked (DESIGN.md, "Supernet and min-min
training"). It is the same machinery :func:`cafeslim.export.slim` runs on a copy, which is why
eval-mode outputs equal those of the exported model ("One currency").

BatchNorm running statistics:

* train mode with a sub-network selected: batch statistics are used and running statistics are
  neither read nor written (``track_running_stats`` is patched off for the call), so no
  sub-network leaks statistics into the full buffers — the full model's running statistics only
  move when the full model itself trains;
* eval mode: the sub-network's recalibrated statistics (:func:`cafeslim.supernet.recalibrate_bn`)
  when present, else the full running statistics sliced to the spec.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..export.slim import module_attributes, patched_attributes, slim
from ..graph.indices import Indices, gather_indices
from ..graph.channel_graph import ChannelGraph, IndexSpec
from .gather import GatherOp, gather, gather_ops, owned_tensor

SpecKey = Tuple[Tuple[int, Tuple[int, ...]], ...]
"""Hashable form of an IndexSpec: only the groups that lose channels; ``()`` is the full model."""

_BN_STATS = ("running_mean", "running_var")


def spec_key(graph: ChannelGraph, spec: Optional[Mapping[int, Sequence[int]]]) -> SpecKey:
    """The cache key of a spec: groups kept whole are dropped, so a full-width spec is ``()``.

    Example:
        >>> spec_key(graph, None)
        ()
    """
    if not spec:
        return ()
    out = []
    for gid, kept in spec.items():
        gid = int(gid)
        kept = tuple(int(i) for i in kept)
        if 0 <= gid < len(graph.groups) and len(kept) == graph.groups[gid].channels:
            continue  # validated later; a whole group changes nothing
        out.append((gid, kept))
    out.sort()
    return tuple(out)


def unwrap(module: nn.Module) -> "Supernet":
    """The :class:`Supernet` inside a ``DistributedDataParallel`` (or similar) wrapper.

    Example:
        >>> unwrap(DistributedDataParallel(supernet)) is supernet   # doctest: +SKIP
        True
    """
    seen = 0
    while not isinstance(module, Supernet):
        inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module) or seen > 4:
            raise ConfigError(f"expected a Supernet or a wrapper of one, got {type(module).__name__}")
        module, seen = inner, seen + 1
    return module


def bn_modules(model: nn.Module) -> List[Tuple[str, nn.modules.batchnorm._NormBase]]:
    """Every BatchNorm-style module that keeps running statistics, with its qualified name."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)
            and getattr(m, "running_mean", None) is not None and getattr(m, "running_var", None) is not None]


# --------------------------------------------------------------------------- prepared specs

@dataclass
class _Prepared:
    """Everything a forward needs for one spec, computed once (see :meth:`Supernet.prepare`)."""

    spec: IndexSpec
    indices: Indices
    attrs: Dict[str, Dict[str, Any]]
    ops: Dict[str, Tuple[nn.Module, str, List[GatherOp]]] = field(default_factory=dict)
    device: Optional[torch.device] = None


# --------------------------------------------------------------------------- the supernet

class Supernet(nn.Module):
    """A model whose forward pass runs the sub-network selected by :meth:`set_subnet`.

    Args:
        model: the original model; its parameters become the supernet weights (not copied).
        graph: the model's channel graph (:func:`cafeslim.graph.analyze`).
        space: the search space (:class:`cafeslim.bins.SearchSpace`), kept for the caller.
        cache_size: prepared specs (indices, attributes) kept, least recently used first out.
            A training step touches 1–5 specs; search revisits few.
        max_bn_stats: recalibrated BN statistics kept per spec, least recently used first out.
        batch_candidates: ``auto`` (CUDA only), ``on``, ``off`` or ``probe``: run a width's
            candidates as one vmapped computation (:mod:`cafeslim.supernet.batched`).
        max_batched_images: memory cap of one batched call, candidates x images.

    Example:
        >>> info = create("tv:resnet18")
        >>> graph = analyze(info.model, info.example_input())
        >>> net = Supernet(info.model, graph).eval()
        >>> spec = graph.prefix_spec({g.id: g.channels // 2 for g in graph.searchable})
        >>> net.set_subnet(spec)
        >>> y = net(info.example_input())          # the half-width sub-network, no masking
        >>> torch.allclose(y, slim(info.model, graph, spec).eval()(info.example_input()), atol=1e-5)
        True
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, space: Any = None, *,
                 cache_size: int = 16, max_bn_stats: int = 256, batch_candidates: str = "auto",
                 max_batched_images: int = 1024) -> None:
        super().__init__()
        if batch_candidates not in ("auto", "on", "off", "probe"):
            raise ConfigError(f"batch_candidates must be auto, on, off or probe, not {batch_candidates!r}")
        self.batch_candidates, self.max_batched_images = batch_candidates, int(max_batched_images)
        self.batching_error: Optional[str] = None  # why vmap failed on this model, if it did
        self.model, self.graph, self.space = model, graph, space
        self.cache_size = int(cache_size)
        self.max_bn_stats = int(max_bn_stats)
        self._key: SpecKey = ()
        self._prepared: "OrderedDict[SpecKey, _Prepared]" = OrderedDict()
        self._bn_stats: "OrderedDict[SpecKey, Dict[str, torch.Tensor]]" = OrderedDict()
        self._bns = bn_modules(model)
        # Checkpoints hold the plain model's keys, whether saved from the supernet, a DDP
        # wrapper of it, or the model itself; loading accepts both forms.
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    # ------------------------------------------------------------------ selection

    @property
    def spec(self) -> Optional[IndexSpec]:
        """The selected sub-network (only the groups that lose channels), None for the full model."""
        return self._prepared[self._key].spec if self._key else None

    @property
    def key(self) -> SpecKey:
        """Hashable form of the selected spec (``()`` for the full model)."""
        return self._key

    def set_subnet(self, spec: Optional[Mapping[int, Sequence[int]]]) -> SpecKey:
        """Select the sub-network that ``forward`` runs; None (or a full-width spec) is the model.

        The indices and module attributes of a spec are computed once and cached, so selecting
        the candidates of every step costs a dictionary lookup after the first time.

        Returns:
            The spec's key (see :func:`spec_key`).

        Raises:
            SpecError: the spec does not fit the graph.

        Example:
            >>> net.set_subnet({3: [0, 1, 2, 5]})
            >>> net.set_subnet(None)    # the full model again
            ()
        """
        key = spec_key(self.graph, spec)
        if key:
            self._prepare(key)
        self._key = key
        return key

    def prepare(self, spec: Optional[Mapping[int, Sequence[int]]]) -> SpecKey:
        """Compute and cache a spec's gather plan without selecting it (returns its key)."""
        key = spec_key(self.graph, spec)
        if key:
            self._prepare(key)
        return key

    def _device(self) -> torch.device:
        for t in self.model.parameters():
            return t.device
        for t in self.model.buffers():
            return t.device
        return torch.device("cpu")

    def _lookup(self) -> Tuple[Dict[str, nn.Module], Dict[str, Tuple[int, ...]]]:
        """Modules by name and tensor shapes by qualname, computed once (spec plans need them
        hundreds of times; ``get_submodule`` per tensor was half the cost of a plan)."""
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            modules = dict(self.model.named_modules(remove_duplicate=False))
            shapes = {n: tuple(t.shape) for n, t in self.model.named_parameters(remove_duplicate=False)}
            shapes.update({n: tuple(t.shape) for n, t in self.model.named_buffers(remove_duplicate=False)})
            cached = (modules, shapes)
            self.__dict__["_lookup_cache"] = cached
        return cached

    def _prepare(self, key: SpecKey) -> _Prepared:
        device = self._device()
        hit = self._prepared.get(key)
        if hit is not None and hit.device == device:
            self._prepared.move_to_end(key)
            return hit
        spec = self.graph.validate_spec(dict((gid, list(kept)) for gid, kept in key))
        # Index tensors outlive this call and are saved for backward by index_select: they
        # must not be inference tensors even when a spec is first met under inference_mode.
        with torch.inference_mode(False):
            modules, shapes = self._lookup()
            indices = gather_indices(self.graph, spec, shapes=shapes, validate=False)
            attrs = module_attributes(self.model, self.graph, spec, indices)
            ops = {}
            # gather_indices shares one index tensor between the members of a group: analyse
            # each tensor once.
            memo: Dict[Tuple[int, int], List[GatherOp]] = {}
            for q, axes in indices.items():
                modname, _, name = q.rpartition(".")
                plan: List[GatherOp] = []
                for axis, idx in axes:
                    mkey = (id(idx), axis)
                    if mkey not in memo:
                        memo[mkey] = gather_ops([(axis, idx)], device)
                    plan.extend(memo[mkey])
                ops[q] = (modules[modname], name, plan)
        prep = _Prepared(spec, indices, attrs, ops, device)
        self._prepared[key] = prep
        if len(self._prepared) > max(self.cache_size, 1):
            # Least recently used first, but never the selected spec.
            for old in self._prepared:
                if old != self._key and old != key:
                    del self._prepared[old]
                    break
        return prep

    # ------------------------------------------------------------------ forward

    def sliced(self, key: Optional[SpecKey] = None, *, skip: Iterable[str] = ()) -> Dict[str, torch.Tensor]:
        """The selected (or given) sub-network's sliced parameters and buffers, differentiable.

        Args:
            key: a spec key from :meth:`set_subnet`/:meth:`prepare`; default the selected one.
            skip: tensor qualnames to leave out.
        """
        key = self._key if key is None else key
        if not key:
            return {}
        prep = self._prepare(key)
        skip = set(skip)
        out = {}
        for qualname, (owner, name, ops) in prep.ops.items():
            if qualname in skip:
                continue
            out[qualname] = gather(owned_tensor(owner, name), ops)
        return out

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the selected sub-network (see the class and module docstrings for BatchNorm)."""
        key = self._key
        stats = None if self.training else self._bn_stats.get(key)
        if not key:
            if stats is None:
                return self.model(x, *args, **kwargs)
            return torch.func.functional_call(self.model, self._on_device(stats), (x, *args), kwargs)
        attrs, skip = self.call_setup(key, stats)
        state = self.sliced(key, skip=skip)
        if stats is not None:
            state.update(self._on_device(stats))
        with patched_attributes(self.model, attrs):
            return torch.func.functional_call(self.model, state, (x, *args), kwargs)

    def call_setup(self, key: SpecKey, stats: Optional[Mapping[str, torch.Tensor]] = None
                   ) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
        """Attributes to patch and tensors not to gather for one call of spec ``key`` (non-empty)
        with recalibrated ``stats`` (eval mode) or None; shared with :mod:`.batched`, so that
        both paths run BatchNorm alike."""
        attrs = self._prepare(key).attrs
        skip: List[str] = []
        if self.training:
            # Batch statistics only: running statistics are neither read nor updated, so a
            # sub-network never writes into the full buffers and its buffers need no slicing.
            training_bns = [n for n, m in self._bns if m.training]
            if training_bns:
                attrs = {**attrs}
                for n in training_bns:
                    attrs[n] = {**attrs.get(n, {}), "track_running_stats": False}
                    skip.extend(f"{n}.{s}" if n else s for s in _BN_STATS)
        elif stats is not None:
            skip.extend(stats)
        return attrs, skip

    def _on_device(self, stats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        device = self._device()
        return {k: v if v.device == device else v.to(device) for k, v in stats.items()}

    # ------------------------------------------------------------------ BN statistics

    def set_bn_stats(self, spec: Optional[Mapping[int, Sequence[int]]], stats: Mapping[str, torch.Tensor]) -> None:
        """Store recalibrated running statistics (``{buffer qualname: tensor}``) for a spec."""
        key = self.prepare(spec)
        self._bn_stats[key] = {k: v.detach().clone() for k, v in stats.items()}
        self._bn_stats.move_to_end(key)
        while len(self._bn_stats) > max(self.max_bn_stats, 1):
            self._bn_stats.popitem(last=False)

    def bn_stats(self, spec: Optional[Mapping[int, Sequence[int]]]) -> Optional[Dict[str, torch.Tensor]]:
        """The recalibrated statistics stored for a spec, or None."""
        return self._bn_stats.get(spec_key(self.graph, spec))

    def clear_bn_stats(self) -> None:
        """Forget every recalibrated statistic (call after the weights change)."""
        self._bn_stats.clear()

    # ------------------------------------------------------------------ export

    def export_subnet(self, spec: Optional[Mapping[int, Sequence[int]]] = None) -> nn.Module:
        """A physically slim copy of the sub-network, with its recalibrated BN statistics.

        The copy is :func:`cafeslim.export.slim` of the model (full model: a deep copy), in the
        model's current train/eval mode; the supernet is not modified.

        Example:
            >>> recalibrate_bn(net, spec, loader)
            >>> small = net.export_subnet(spec).eval()
        """
        key = spec_key(self.graph, spec)
        if key:
            small = slim(self.model, self.graph, self._prepare(key).spec)
        else:
            small = copy.deepcopy(self.model)
        stats = self._bn_stats.get(key)
        if stats:
            with torch.no_grad():
                for qualname, value in stats.items():
                    buf = small.get_buffer(qualname)
                    buf.copy_(value.to(buf.device, buf.dtype))
        return small

    def subnet_state(self, spec: Optional[Mapping[int, Sequence[int]]] = None) -> Dict[str, torch.Tensor]:
        """The ``state_dict`` of :meth:`export_subnet` (loads into ``slim(model, graph, spec)``)."""
        return self.export_subnet(spec).state_dict()

    # ------------------------------------------------------------------ module plumbing

    def _apply(self, fn, recurse: bool = True):  # noqa: D401 - nn.Module override
        # .to()/.cuda()/.half(): cached index tensors and stored statistics follow the model.
        super()._apply(fn, recurse)
        self._prepared.clear()
        for stats in self._bn_stats.values():
            for k, v in stats.items():
                stats[k] = fn(v)
        return self

    def extra_repr(self) -> str:
        return f"searchable_groups={len(self.graph.searchable)}, subnet={'full' if not self._key else 'sliced'}"


def _strip_prefix(module: nn.Module, state: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post hook: ``<prefix>model.x`` -> ``<prefix>x`` (in place, order kept)."""
    inner = prefix + "model."
    for k in [k for k in state if k.startswith(inner)]:
        state[prefix + k[len(inner):]] = state.pop(k)
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        for k in [k for k in meta if k == inner[:-1] or k.startswith(inner)]:
            meta[(prefix + k[len(inner):]) if k != inner[:-1] else prefix[:-1]] = meta.pop(k)


def _add_prefix(module: nn.Module, state: Dict[str, Any], prefix: str, local_metadata: Any,
                strict: bool, missing: List[str], unexpected: List[str], errors: List[str]) -> None:
    """load_state_dict pre hook: accept the plain model's keys (and the prefixed ones)."""
    inner = prefix + "model."
    own = set(module.model.state_dict(keep_vars=True))
    for k in [k for k in state if k.startswith(prefix)]:
        rest = k[len(prefix):]
        # A plain key wins, so that a model with a child called "model" still loads; a key
        # that is already in the prefixed form is left alone; anything else gets the prefix
        # and is then reported as unexpected under the model's own name.
        if rest in own or not (rest.startswith("model.") and rest[6:] in own):
            state[inner + rest] = state.pop(k)
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        # Module versions (BatchNorm's, ...) are looked up by module prefix.
        for k in [k for k in meta if (k + ".").startswith(prefix)]:
            rest = k[len(prefix):] if len(k) > len(prefix) else ""
            meta.setdefault(inner + rest if rest else inner[:-1], meta[k])
