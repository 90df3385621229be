"""Channel order: which channels of a group count as the most important (leftmost).

Bins are contiguous runs of *importance positions*, and every width keeps the first bins (up
to the locally free zone of Eq. 5), so the order decides which channels a narrow sub-network
inherits. Two orders:

- ``natural``: position ``i`` is channel ``i``. Right for random initialisation, where no
  channel is more important than another, and the cheapest to reason about.
- ``l1``: channels sorted by decreasing importance score, for pretrained weights. The score of a
  channel is the sum over the group's members of

  - the L1 norm of every producer weight (role ``out``, parameter ``weight``) along the member's
    axis: a conv's ``|w[c]|.sum()``, a linear's row norm;
  - ``|gamma|`` of every BatchNorm scale in the group (role ``norm``).

  Each member's scores are divided by their mean before summing. Without that, one layer with a
  large fan-in (a 3x3 conv over 512 inputs has L1 norms in the hundreds) would decide the order
  alone and the BN scales (around 1) would never matter; with it, every member votes equally.

A group is one permutation, applied to every member (a residual group's convs, BNs and
readers all keep the same channels). A blocked group (grouped conv, GroupNorm) gets one
permutation of its *local* channels, summed over blocks and shared by every block, because
every block must keep the same local pattern.

The order is returned as ``{group id: (local channel at position 0, at position 1, ...)}`` —
the ``order`` tuple of :class:`~cafeslim.bins.space.GroupBins`.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..graph.channel_graph import ChannelGraph, Group, Member
from ..ops import is_bn_like

ORDERS = ("natural", "l1")

ChannelOrder = Dict[int, Tuple[int, ...]]
"""Searchable group id -> local channel index at each importance position."""


def channel_order(graph: ChannelGraph, model: Optional[nn.Module] = None,
                  method: str = "natural") -> ChannelOrder:
    """One importance permutation per searchable group (most important first).

    Args:
        graph: the model's channel graph.
        model: the model whose weights score the channels (required for ``l1``).
        method: ``natural`` or ``l1`` (see the module docstring).

    Returns:
        ``{gid: order}`` with ``order`` a permutation of ``range(group.block_size)``.

    Raises:
        ConfigError: unknown method, or ``l1`` without a model.

    Example:
        >>> order = channel_order(graph, model, "l1")            # doctest: +SKIP
        >>> order[graph.searchable[0].id][:4]                     # doctest: +SKIP
        (17, 3, 40, 8)
    """
    if method not in ORDERS:
        raise ConfigError(f"unknown channel order {method!r}; choose from {', '.join(ORDERS)}")
    if method == "natural":
        return {g.id: tuple(range(g.block_size)) for g in graph.searchable}
    if model is None:
        raise ConfigError("the l1 channel order needs the model's weights")
    scores = channel_scores(graph, model)
    # Stable sort on the negated score: ties (an all-zero layer) keep the natural order.
    return {gid: tuple(int(i) for i in np.argsort(-s, kind="stable")) for gid, s in scores.items()}


def channel_scores(graph: ChannelGraph, model: nn.Module) -> Dict[int, np.ndarray]:
    """The ``l1`` importance score of every local channel of every searchable group.

    Returns:
        ``{gid: scores}`` with ``scores`` of length ``group.block_size`` (summed over blocks);
        all zeros for a group with no scored member.

    Example:
        >>> s = channel_scores(graph, model)[1]                   # doctest: +SKIP
        >>> s.shape                                               # doctest: +SKIP
        (64,)
    """
    modules = dict(model.named_modules())
    out: Dict[int, np.ndarray] = {}
    for g in graph.searchable:
        total = np.zeros(g.block_size)
        for m in g.members:
            s = _member_score(g, m, modules)
            if s is None:
                continue
            mean = float(s.mean())
            if mean > 0:
                total += s / mean
        out[g.id] = total
    return out


def _member_score(g: Group, m: Member, modules: Mapping[str, nn.Module]) -> Optional[np.ndarray]:
    """Per-local-channel score of one member, or None when the member does not vote."""
    mod = modules.get(m.module)
    if mod is None or m.name != "weight":
        return None
    if m.role == "norm":
        if not is_bn_like(mod):
            return None
    elif m.role != "out":
        return None
    t = getattr(mod, m.name, None)
    if not isinstance(t, torch.Tensor) or t.dim() <= m.axis:
        return None
    # A member whose axis holds one block's local channels (blocks > 1) has block_size entries;
    # otherwise it holds all of the group's channels, block after block.
    n = g.block_size if m.blocks > 1 else g.channels
    with torch.no_grad():
        x = t.detach().float().movedim(m.axis, 0)[m.offset:m.offset + n * m.inner]
        if x.shape[0] != n * m.inner:
            return None
        per = x.reshape(n, -1).abs().sum(1).cpu().double().numpy()
    if n != g.block_size:
        per = per.reshape(g.blocks, g.block_size).sum(0)
    return per


def validate_order(graph: ChannelGraph, order: Mapping[int, object]) -> ChannelOrder:
    """Check that every entry is a permutation of its group's local channels.

    Raises:
        ConfigError: unknown or fixed group, or not a permutation.

    Example:
        >>> validate_order(graph, {1: range(64)})[1][:3]          # doctest: +SKIP
        (0, 1, 2)
    """
    searchable = {g.id: g for g in graph.searchable}
    out: ChannelOrder = {}
    for gid, perm in order.items():
        g = searchable.get(int(gid))
        if g is None:
            raise ConfigError(f"channel order names group {gid}, which is not searchable")
        p = tuple(int(i) for i in perm)  # type: ignore[union-attr]
        if sorted(p) != list(range(g.block_size)):
            raise ConfigError(f"channel order of group {gid} is not a permutation of "
                              f"range({g.block_size})")
        out[int(gid)] = p
    return out
