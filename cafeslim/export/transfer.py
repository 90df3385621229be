"""Backbone width transfer: a classification export's widths onto a detection/segmentation model.

The paper's Table 5 searches a backbone on ImageNet and reuses its widths in Faster R-CNN and
RetinaNet. A ``widths.json`` names the modules of its groups (``layer1.0.conv1``); the same
backbone inside a detector lives under another path (``backbone.body.layer1.0.conv1``; a
segmentation model's ``backbone.layer1.0.conv1``; MobileNetV3's ``features.3.block.0.0`` is
``backbone.body.3.block.0.0``). Nothing is hard-coded per model:

1. **Prefixes.** Every module path of the file and of the target's channel graph is split into
   ``prefix + rest`` at each dot; the pair of prefixes that lines up the most modules wins.
2. **Region.** The backbone is where both sides have the same top-level children under their
   prefixes (``conv1`` … ``layer4``; the classifier's ``fc`` and the detector's FPN lie
   outside). Inside it every module must exist on both sides with the same original channels,
   and every channel group must couple the same modules: otherwise the architectures differ
   and the transfer is refused (:class:`~cafeslim.errors.TransferError`), never guessed.
3. **Widths.** Each searched group of the file gives its kept channel indices to the matching
   target group. Two cases cannot take them and are *reported, not refused*: the target group
   is fixed (e.g. by a head contract), or the group lies outside the backbone (the
   classifier's hidden layer of MobileNetV3). They are kept whole and listed in
   :attr:`TransferPlan.not_applied`; a file none of whose searched groups applies is refused.

Example:
    >>> plan = plan_transfer(read_widths("r50/widths.json"), graph, det, part="backbone")  # doctest: +SKIP
    >>> plan.prefix, len(plan.applied)                                                     # doctest: +SKIP
    (('', 'backbone.body.'), 52)
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, Union

from torch import nn

from ..errors import SpecError, TransferError
from ..graph.channel_graph import ChannelGraph, IndexSpec, spec_from_json
from ..ops import module_handler

SHAPE_KEYS = ("in", "out", "channels")
"""The original channel counts compared per module (a conv's groups change with slimming)."""


@dataclass(frozen=True)
class GroupTransfer:
    """What became of one searched (slimmed) group of the widths file.

    Attributes:
        source: its group id in the file.
        target: the matching target group id (None outside the backbone).
        channels, kept: original and kept channels.
        layers: its first module paths in the target (in the file, outside the backbone).
        status: ``applied``, ``fixed`` (the target group is fixed: ``reason``) or ``outside``.
        reason: why it was not applied (empty when applied).
    """

    source: int
    target: Optional[int]
    channels: int
    kept: int
    layers: Tuple[str, ...]
    status: str
    reason: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {"source": self.source, "target": self.target, "channels": self.channels,
                "kept": self.kept, "layers": list(self.layers), "status": self.status,
                "reason": self.reason}


@dataclass(frozen=True)
class TransferPlan:
    """The mapping of a widths file onto a target graph (:func:`plan_transfer`).

    Attributes:
        source: the model the widths were searched on (the file's ``source``).
        prefix: (prefix in the file, prefix in the target), e.g. ``("", "backbone.body.")``.
        backbone: qualname of the target module that holds the backbone ("" = the root).
        spec: the target's IndexSpec.
        groups: one row per searched group of the file.
        modules: how many modules were matched by path.
    """

    source: str
    prefix: Tuple[str, str]
    backbone: str
    spec: IndexSpec
    groups: Tuple[GroupTransfer, ...] = field(default_factory=tuple)
    modules: int = 0

    @property
    def applied(self) -> List[GroupTransfer]:
        return [g for g in self.groups if g.status == "applied"]

    @property
    def not_applied(self) -> List[GroupTransfer]:
        return [g for g in self.groups if g.status != "applied"]

    def to_json(self) -> Dict[str, Any]:
        return {"source": self.source, "prefix": {"source": self.prefix[0], "target": self.prefix[1]},
                "backbone": self.backbone, "modules": self.modules, "applied": len(self.applied),
                "groups": [g.to_json() for g in self.groups]}


def read_widths(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a ``widths.json`` for transfer (no graph to validate against: that is the plan's job).

    Raises:
        SpecError: unreadable, or not a cafeslim widths file with groups and an IndexSpec.

    Example:
        >>> info = read_widths("runs/r50/export/widths.json")                     # doctest: +SKIP
    """
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot read widths file {path}: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("index_spec"), dict) \
            or not isinstance(info.get("groups"), list):
        raise SpecError(f"{path} is not a cafeslim widths file (no 'groups' and 'index_spec')")
    return info


def _absolute(name: str, part: str) -> str:
    return f"{part}.{name}" if part and name else (part or name)


def _splits(name: str) -> List[Tuple[str, str]]:
    """Every ``(prefix, rest)`` of a dotted path, the prefix ending in a dot (or empty)."""
    parts = name.split(".")
    return [(".".join(parts[:i]) + ("." if i else ""), ".".join(parts[i:])) for i in range(len(parts))]


def best_prefix(source: Set[str], target: Set[str]) -> Tuple[Tuple[str, str], int]:
    """The (source prefix, target prefix) pair under which the most module paths coincide.

    Ties go to the shortest prefixes. Example:
        >>> best_prefix({"features.0.0", "features.1.block.0.0", "classifier.0"},
        ...             {"backbone.body.0.0", "backbone.body.1.block.0.0"})
        (('features.', 'backbone.body.'), 2)
    """
    by_rest: Dict[str, List[str]] = defaultdict(list)
    for t in target:
        for tp, rest in _splits(t):
            by_rest[rest].append(tp)
    counts: Counter = Counter()
    for s in source:
        for sp, rest in _splits(s):
            for tp in by_rest.get(rest, ()):
                counts[(sp, tp)] += 1
    if not counts:
        return ("", ""), 0
    pair = min(counts, key=lambda p: (-counts[p], len(p[0]) + len(p[1]), p))
    return pair, counts[pair]


def _first(name: str, prefix: str) -> Optional[str]:
    """The top-level child of ``name`` under ``prefix`` (None when not under it)."""
    return name[len(prefix):].split(".")[0] if name.startswith(prefix) else None


def _target_shape(model: nn.Module, name: str) -> Dict[str, Any]:
    mod = model.get_submodule(name)
    handler = module_handler(mod)
    row = (handler.describe(mod) if handler is not None else None) or {}
    return {k: row[k] for k in SHAPE_KEYS if k in row}


def _source_shape(row: Mapping[str, Any]) -> Dict[str, Any]:
    full = row.get("full") if isinstance(row.get("full"), dict) else row
    return {k: full[k] for k in SHAPE_KEYS if k in full}


def _region(src_mods: Set[str], tgt_mods: Set[str], sp: str, tp: str) -> Tuple[Dict[str, str], Set[str]]:
    """Source module -> target module inside the shared backbone; refuses a missing module."""
    shared = {_first(s, sp) for s in src_mods} & {_first(t, tp) for t in tgt_mods}
    shared.discard(None)
    src_in = sorted(s for s in src_mods if _first(s, sp) in shared)
    tgt_in = {t for t in tgt_mods if _first(t, tp) in shared}
    mapping = {s: tp + s[len(sp):] for s in src_in}
    for s, t in mapping.items():
        if t not in tgt_in:
            raise TransferError(f"the widths file's {s} has no counterpart {t} in the target: "
                                "the backbones differ")
    missing = sorted(tgt_in - set(mapping.values()))
    if missing:
        t = missing[0]
        raise TransferError(f"the target's {t} has no counterpart {sp + t[len(tp):]} in the "
                            "widths file: the backbones differ")
    return mapping, tgt_in


def _carry_widths(src_groups: List[Dict[str, Any]], src_spec: IndexSpec, mapping: Dict[str, str],
                  by_key: Dict[FrozenSet[str], List[int]], graph: ChannelGraph,
                  tgt_layers: Dict[int, List[str]]) -> Tuple[IndexSpec, List[GroupTransfer]]:
    """The target's IndexSpec and one row per searched source group (applied, fixed, outside)."""
    spec: IndexSpec = {}
    rows: List[GroupTransfer] = []
    for g in src_groups:
        key = frozenset(n for n in g["layers"] if n in mapping)
        idx = src_spec.get(int(g["id"]), None)
        searched = idx is not None and len(idx) < int(g["channels"])
        if not key:
            if searched:
                rows.append(GroupTransfer(int(g["id"]), None, int(g["channels"]), len(idx),
                                          tuple(g["layers"][:3]), "outside",
                                          "outside the backbone: no counterpart in the target"))
            continue
        if not by_key.get(key):
            raise TransferError(f"the widths file couples the channels of {', '.join(sorted(key)[:3])} "
                                "differently from the target: the backbones differ")
        tgt = graph.groups[by_key[key].pop(0)]
        if tgt.channels != int(g["channels"]):
            raise TransferError(f"group of {sorted(key)[0]} has {g['channels']} channels in the "
                                f"widths file, {tgt.channels} in the target")
        if not searched:
            continue
        shown = tuple(tgt_layers[tgt.id][:3])
        if tgt.searchable:
            spec[tgt.id] = list(idx)
            rows.append(GroupTransfer(int(g["id"]), tgt.id, tgt.channels, len(idx), shown, "applied"))
        else:
            rows.append(GroupTransfer(int(g["id"]), tgt.id, tgt.channels, len(idx), shown, "fixed",
                                      "fixed in the target: " + "; ".join(tgt.reasons)))
    return spec, rows


def plan_transfer(widths: Mapping[str, Any], graph: ChannelGraph, model: nn.Module,
                  part: str = "") -> TransferPlan:
    """Map a widths file's searched widths onto the backbone of ``model`` (module docstring).

    Args:
        widths: the content of a ``widths.json`` (:func:`read_widths`).
        graph: the channel graph of the target's traced part.
        model: the whole target model (for module shapes and the backbone's qualname).
        part: qualname of the traced part inside ``model`` ("" = the whole model).

    Raises:
        TransferError: no module path matches, a module or channel group of the backbone has
            no counterpart or other original channels, or no searched width applies.

    Example:
        >>> plan = plan_transfer(read_widths("mv3/widths.json"), graph, lraspp)  # doctest: +SKIP
        >>> plan.prefix                                                           # doctest: +SKIP
        ('features.', 'backbone.')
    """
    src_part = str(widths.get("traced_part") or "")
    src_groups = [{**g, "layers": [_absolute(n, src_part) for n in g.get("layers", [])]}
                  for g in widths["groups"] if isinstance(g, dict)]
    src_rows = {_absolute(n, src_part): r for n, r in (widths.get("layers") or {}).items()
                if isinstance(r, dict)}
    src_spec = spec_from_json(widths["index_spec"])
    src_mods = {n for g in src_groups for n in g["layers"]}
    tgt_layers = {g.id: [_absolute(n, part) for n in g.layers] for g in graph.groups}
    tgt_mods = {n for names in tgt_layers.values() for n in names}

    (sp, tp), count = best_prefix(src_mods, tgt_mods)
    if count == 0:
        raise TransferError(f"no module path of the widths file ({min(src_mods, default='none')}, …) "
                            f"matches a module of the target ({min(tgt_mods, default='none')}, …)")
    if 2 * count < len(src_mods):  # a classifier head is a few modules, not half the network
        raise TransferError(f"only {count} of the widths file's {len(src_mods)} modules match the "
                            f"target's by path (best: {sp!r} ↔ {tp!r}): the backbones differ")
    mapping, tgt_in = _region(src_mods, tgt_mods, sp, tp)
    for s, t in mapping.items():
        want, have = _source_shape(src_rows.get(s, {})), _target_shape(model, t)
        if any(want[k] != have[k] for k in want.keys() & have.keys()):
            raise TransferError(f"{s} has channels {want} in the widths file, the target's {t} "
                                f"{have}: the backbones differ")
    back = {t: s for s, t in mapping.items()}
    by_key: Dict[FrozenSet[str], List[int]] = defaultdict(list)
    for gid, names in tgt_layers.items():
        key = frozenset(back[n] for n in names if n in tgt_in)
        if key:
            by_key[key].append(gid)

    spec, rows = _carry_widths(src_groups, src_spec, mapping, by_key, graph, tgt_layers)
    if rows and not spec:
        raise TransferError(f"none of the widths file's {len(rows)} searched groups applies to the "
                            f"target ({rows[0].reason})")
    try:
        spec = graph.validate_spec(spec)
    except SpecError as exc:
        raise TransferError(f"the transferred widths do not fit the target: {exc}") from None
    return TransferPlan(source=str(widths.get("source", "")), prefix=(sp, tp), backbone=tp.rstrip("."),
                        spec=spec, groups=tuple(rows), modules=len(mapping))


__all__ = ["GroupTransfer", "TransferPlan", "best_prefix", "plan_transfer", "read_widths"]
