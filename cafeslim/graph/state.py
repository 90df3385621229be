"""Channel bookkeeping during one analysis pass: atoms, union-find and tensor layouts.

An *atom* is a run of channels created by one producer (a conv's outputs, a parameter, a
model input). Ops couple atoms (union-find), attach members to them, or fix them. When an op
cuts an atom in the middle (a channel split, or a residual add of two differently
concatenated tensors) the cut is recorded against the atom's origin and the whole pass is run
again with the producer pre-split there; at the fixed point every segment of every tensor is
a whole atom, and every union class of atoms becomes one channel group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

from .channel_graph import Group, Member


@dataclass(frozen=True)
class Seg:
    """``length`` channels of ``atom`` starting at ``start`` within it."""

    atom: int
    start: int
    length: int


@dataclass(frozen=True)
class Desc:
    """Channel layout of a tensor during analysis (atoms, not yet groups)."""

    shape: Tuple[int, ...]
    axis: int
    segs: Tuple[Seg, ...]
    inner: int = 1

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segs)

    def with_axis(self, shape: Tuple[int, ...], axis: int, inner: Optional[int] = None) -> "Desc":
        return Desc(tuple(shape), axis, self.segs, self.inner if inner is None else inner)

    def boundaries(self) -> List[int]:
        out, pos = [0], 0
        for s in self.segs:
            pos += s.length
            out.append(pos)
        return out


class State:
    """Atoms and their union-find for one pass.

    Args:
        cuts: origin key -> channel offsets where the producer must be pre-split; shared
            across passes and extended by :meth:`cut`.
    """

    def __init__(self, cuts: Dict[str, Set[int]]):
        self.cuts = cuts
        self.new_cuts = False
        self.size: List[int] = []
        self.parent: List[int] = []
        self.origin: List[Tuple[str, int]] = []
        self.members: List[List[Member]] = []
        self.reasons: List[List[str]] = []
        self.blocks: List[int] = []
        self.producer: List[str] = []
        # (module, tensor, axis) -> the layout first attached there (see add_member)
        self.attached: Dict[Tuple[str, str, int], Desc] = {}

    # ----- atoms -------------------------------------------------------------------------
    def new(self, key: str, size: int, producer: str, reason: Optional[str] = None) -> Tuple[Seg, ...]:
        """Atoms for a producer of ``size`` channels, pre-split at its recorded cuts."""
        points = sorted(p for p in self.cuts.get(key, ()) if 0 < p < size)
        bounds = [0, *points, size]
        segs = []
        for a, b in zip(bounds, bounds[1:]):
            aid = len(self.size)
            self.size.append(b - a)
            self.parent.append(aid)
            self.origin.append((key, a))
            self.members.append([])
            self.reasons.append([reason] if reason else [])
            self.blocks.append(1)
            self.producer.append(producer)
            segs.append(Seg(aid, 0, b - a))
        return tuple(segs)

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def cut(self, seg: Seg, offset: int) -> None:
        """Record that ``seg``'s atom must be split ``offset`` channels into the segment."""
        at = seg.start + offset
        if 0 < at < self.size[seg.atom]:
            key, base = self.origin[seg.atom]
            points = self.cuts.setdefault(key, set())
            if base + at not in points:
                points.add(base + at)
                self.new_cuts = True

    def whole(self, segs: Tuple[Seg, ...]) -> bool:
        """True when every segment is a whole atom; otherwise records the cuts needed."""
        ok = True
        for s in segs:
            if s.start != 0 or s.length != self.size[s.atom]:
                self.cut(s, 0)
                self.cut(s, s.length)
                ok = False
        return ok

    # ----- coupling ----------------------------------------------------------------------
    def fix(self, segs, reason: str) -> None:
        for s in segs:
            r = self.reasons[s.atom]
            if reason not in r and len(r) < 4:
                r.append(reason)

    def set_blocks(self, segs, blocks: int, reason_if_bad: str) -> None:
        for s in segs:
            b = self.blocks[s.atom]
            new = b * blocks // math.gcd(b, blocks)
            if self.size[s.atom] % new:
                self.fix([s], reason_if_bad)
            else:
                self.blocks[s.atom] = new

    def merge(self, a: Desc, b: Desc) -> bool:
        """Couple two layouts channel by channel; False (and cuts recorded) if they misalign."""
        if a.inner != b.inner or a.channels != b.channels:
            self.fix(a.segs + b.segs, "coupled with a tensor of another channel layout")
            return False
        ba, bb = a.boundaries(), b.boundaries()
        if ba != bb:
            for desc, others in ((a, bb), (b, ba)):
                pos = 0
                for s in desc.segs:
                    for p in others:
                        if pos < p < pos + s.length:
                            self.cut(s, p - pos)
                    pos += s.length
            return False
        if not (self.whole(a.segs) & self.whole(b.segs)):
            return False
        for sa, sb in zip(a.segs, b.segs):
            self.union(sa.atom, sb.atom)
        return True

    def add_member(self, desc: Desc, module: str, name: str, axis: int, role: str,
                   blocks: int = 1, inner: Optional[int] = None) -> None:
        """Attach a tensor axis that holds ``desc``'s channels in order.

        An axis can be cut one way only, so it holds one layout: a module called more than
        once (an Mlp shared by several inputs, a conv applied to two streams) attaches its
        weight again, and each later call's channels are coupled with the first call's.
        """
        first = self.attached.setdefault((module, name, axis), desc)
        if first.segs != desc.segs or first.inner != desc.inner:
            self.merge(first, desc)
        inner = desc.inner if inner is None else inner
        pos = 0
        for s in desc.segs:
            self.members[s.atom].append(Member(module, name, axis, pos * inner, inner, blocks, role))
            pos += s.length

    # ----- result ------------------------------------------------------------------------
    def groups(self) -> Tuple[List[Group], Dict[int, int]]:
        """One group per union class, in first-atom order; returns groups and atom -> group."""
        roots: Dict[int, int] = {}
        atom_group: Dict[int, int] = {}
        groups: List[Group] = []
        for a in range(len(self.size)):
            r = self.find(a)
            if r not in roots:
                roots[r] = len(groups)
                groups.append(Group(id=len(groups), channels=self.size[a]))
            g = groups[roots[r]]
            atom_group[a] = g.id
            g.members.extend(self.members[a])
            for reason in self.reasons[a]:
                if reason not in g.reasons:
                    g.reasons.append(reason)
            g.blocks = g.blocks * self.blocks[a] // math.gcd(g.blocks, self.blocks[a])
            if self.producer[a] and self.producer[a] not in g.producers:
                g.producers.append(self.producer[a])
        for g in groups:
            if g.channels % g.blocks:
                g.reasons.append("block structures of grouped ops do not fit together")
            g.searchable = not g.reasons
            g.members = list(dict.fromkeys(g.members))
        return groups, atom_group
