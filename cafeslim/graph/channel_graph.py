"""The data that graph analysis produces: channel groups, their members and the op records.

A *group* is a set of channels that must be kept or removed together across the whole
network: a conv's output channels, every BN/LN that normalises them, every consumer that
reads them and every residual branch added to them. A *member* says where those channels
live in one parameter or buffer (which axis, at which offset). An :data:`IndexSpec` maps
searchable group ids to the sorted channel indices that a sub-network keeps.

Every tensor on the traced graph is described by a :class:`TensorDesc`: which axis carries
channels and which groups lie along it, in order. Op records keep those descriptions for
the FLOPs model, so that any width vector can be costed without re-tracing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import SpecError

IndexSpec = Dict[int, List[int]]
"""Searchable group id -> sorted kept channel indices. Groups not listed are kept whole."""


@dataclass(frozen=True)
class Member:
    """Where a group's channels live in one tensor of one module.

    Attributes:
        module: qualified module name (``""`` for the root module).
        name: parameter or buffer name in that module (``weight``, ``running_mean``, ...).
        axis: axis of the tensor that carries the channels.
        offset: index on ``axis`` of the group's first channel (non-zero after a concat).
        inner: consecutive entries per channel on ``axis`` (a flatten before a Linear maps one
            channel to H*W input columns).
        blocks: when > 1, the axis holds the local channels of one block only (the input axis
            of a grouped conv weight): every block keeps the same local pattern.
        role: ``out``, ``in``, ``norm`` or ``param``; for display and FLOPs bookkeeping.
    """

    module: str
    name: str
    axis: int
    offset: int = 0
    inner: int = 1
    blocks: int = 1
    role: str = ""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


@dataclass
class Group:
    """A set of coupled channels.

    Attributes:
        id: index in :attr:`ChannelGraph.groups`.
        channels: number of channels.
        members: every tensor slice that holds these channels.
        searchable: False when anything touching the group is not understood.
        reasons: why the group is fixed (empty when searchable).
        blocks: widths must be multiples of ``blocks``, with the same local pattern in each
            block (grouped convs, GroupNorm).
        producers: names of the modules (or parameters) that create these channels.
    """

    id: int
    channels: int
    members: List[Member] = field(default_factory=list)
    searchable: bool = True
    reasons: List[str] = field(default_factory=list)
    blocks: int = 1
    producers: List[str] = field(default_factory=list)

    @property
    def block_size(self) -> int:
        return self.channels // self.blocks

    @property
    def layers(self) -> List[str]:
        """Modules with a member in this group, in first-seen order."""
        seen: Dict[str, None] = {}
        for m in self.members:
            seen.setdefault(m.module or m.name, None)
        return list(seen)


@dataclass(frozen=True)
class TensorDesc:
    """Channel layout of one traced tensor.

    Attributes:
        shape: the tensor's full shape at the example input.
        axis: the channel axis (non-negative), or None for tensors without one (scalars,
            shapes, attention maps after a head split).
        groups: the groups laid along ``axis``, in order; their channel counts times
            ``inner`` add up to ``shape[axis]``.
        inner: entries per channel along ``axis`` (1 except after a flatten).
    """

    shape: Tuple[int, ...]
    axis: Optional[int]
    groups: Tuple[int, ...] = ()
    inner: int = 1


@dataclass(frozen=True)
class OpRecord:
    """One traced op, kept for FLOPs accounting.

    Attributes:
        node: the fx node name.
        kind: a :class:`cafeslim.ops.OpKind` (a ``str``: ``conv``, ``linear``, ``matmul``,
            ``batch_norm``, ``layer_norm``, ``group_norm``, ``instance_norm``, ``upsample``,
            ``adaptive_avg_pool``, ``opaque``, ``other`` ...).
        module: qualified name of the module that ran it (``""`` for functions at the root).
        inputs: descriptions of the tensor inputs, in call order.
        output: description of the (first) tensor output.
        attrs: op parameters the cost depends on (``groups``, ``kernel``, ``affine``, ...).
        name: the function, method or module name that ran (``grid_sample``, ``layer1.0.relu``):
            what an ``other`` record is. Records of earlier versions wrote ``other:NAME`` as
            their kind instead (:func:`cafeslim.ops.split_kind` reads both).
    """

    node: str
    kind: str
    module: str
    inputs: Tuple[Optional[TensorDesc], ...]
    output: Optional[TensorDesc]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class ChannelGraph:
    """Result of :func:`cafeslim.graph.analyze`.

    Attributes:
        groups: every channel group; ``groups[i].id == i``.
        ops: op records in execution order (for :class:`cafeslim.flops.FlopsModel`).
        input_shape: shape of the example input the graph was traced with.
        source: free-form description of the model (name), for reports.
        tracer: how the graph was obtained (``fx``, ``fx+leaf:...``).
    """

    groups: List[Group]
    ops: List[OpRecord]
    input_shape: Tuple[int, ...]
    source: str = ""
    tracer: str = "fx"

    @property
    def searchable(self) -> List[Group]:
        return [g for g in self.groups if g.searchable]

    @property
    def fixed(self) -> List[Group]:
        return [g for g in self.groups if not g.searchable]

    def full_widths(self) -> Dict[int, int]:
        """Channel count of every searchable group."""
        return {g.id: g.channels for g in self.searchable}

    def prefix_spec(self, widths: Mapping[int, int]) -> IndexSpec:
        """IndexSpec keeping the first ``widths[g]`` channels of each group (block-aware).

        Example:
            >>> spec = graph.prefix_spec({g.id: g.channels // 2 for g in graph.searchable})
        """
        spec: IndexSpec = {}
        for gid, w in widths.items():
            g = self.groups[gid]
            local = w // g.blocks
            spec[gid] = [b * g.block_size + i for b in range(g.blocks) for i in range(local)]
        return spec

    def validate_spec(self, spec: Mapping[int, Sequence[int]]) -> IndexSpec:
        """Check an IndexSpec against the graph and return it normalised (sorted lists).

        Raises:
            SpecError: unknown or fixed group, indices out of range or duplicated, an empty
                group, or a blocked group whose blocks keep different local patterns.
        """
        out: IndexSpec = {}
        for key, idx in spec.items():
            gid = int(key)
            if gid < 0 or gid >= len(self.groups):
                raise SpecError(f"IndexSpec names group {gid}, the graph has {len(self.groups)}")
            g = self.groups[gid]
            kept = sorted(int(i) for i in idx)
            if not g.searchable and len(kept) != g.channels:
                raise SpecError(f"group {gid} is fixed ({'; '.join(g.reasons)}) and cannot be slimmed")
            if not kept:
                raise SpecError(f"IndexSpec keeps no channel of group {gid}")
            if len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= g.channels:
                raise SpecError(f"IndexSpec for group {gid} has indices outside [0, {g.channels}) or repeats")
            if g.blocks > 1:
                bs = g.block_size
                local = [i for i in kept if i < bs]
                want = [b * bs + i for b in range(g.blocks) for i in local]
                if kept != want:
                    raise SpecError(
                        f"group {gid} is split into {g.blocks} blocks (grouped conv or GroupNorm); "
                        "every block must keep the same local channels")
            out[gid] = kept
        return out

    def widths_of(self, spec: Mapping[int, Sequence[int]]) -> Dict[int, int]:
        """Width of every searchable group under ``spec`` (full width where absent)."""
        return {g.id: len(spec[g.id]) if g.id in spec else g.channels for g in self.searchable}

    def width_vector(self, widths: Mapping[int, int]) -> np.ndarray:
        """Widths of the searchable groups as a vector in :attr:`searchable` order."""
        return np.array([widths.get(g.id, g.channels) for g in self.searchable], dtype=np.float64)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready summary (groups with members; ops are left out)."""
        return {
            "source": self.source,
            "tracer": self.tracer,
            "input_shape": list(self.input_shape),
            "groups": [
                {
                    "id": g.id,
                    "channels": g.channels,
                    "searchable": g.searchable,
                    "reason": "; ".join(g.reasons),
                    "blocks": g.blocks,
                    "producers": g.producers,
                    "members": [asdict(m) for m in g.members],
                }
                for g in self.groups
            ],
        }


def spec_to_json(spec: Mapping[int, Sequence[int]]) -> Dict[str, List[int]]:
    """IndexSpec with string keys, for JSON files."""
    return {str(k): [int(i) for i in v] for k, v in sorted(spec.items())}


def spec_from_json(data: Mapping[str, Sequence[int]]) -> IndexSpec:
    """Inverse of :func:`spec_to_json`."""
    try:
        return {int(k): [int(i) for i in v] for k, v in data.items()}
    except (TypeError, ValueError) as exc:
        raise SpecError(f"malformed IndexSpec: {exc}") from None
