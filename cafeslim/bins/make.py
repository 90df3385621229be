"""FLOPs-sensitive bins (Eq. 6-9), generalised to any channel graph, and their statistics.

**Sensitivity.** ``ε_g`` is the marginal FLOPs of one channel of group ``g`` at full width:
``FLOPs(full) - FLOPs(full with g one channel narrower)``, read off the
:class:`~cafeslim.flops.FlopsModel`, so it holds for residual groups, depthwise convs, SE gates,
linear layers and anything else the FLOPs model costs — not just the conv chain of Eq. 7 (for a
plain chain it *is* Eq. 7: the removed channel is one output of layer ``i`` and one input of
layer ``i+1``). All ``ε`` come from a single vectorised :meth:`FlopsModel.evaluate` call.

A *blocked* group (grouped conv, GroupNorm; ``blocks`` > 1) cannot lose a single channel: its
smallest step is one local channel in every block, i.e. ``blocks`` channels. Its ``ε_g`` is that
step's FLOPs divided by ``blocks``, so it stays a per-channel number comparable with Eq. 7.

**Bin size** (Eq. 9): ``b_g = max(1, round(β · max_j ε_j / ε_g))`` channels, with ``round``
half up (Python's banker's rounding would make ``2.5 -> 2`` but ``3.5 -> 4``). Then every bin
costs about ``β · max ε`` FLOPs: at ``β = 1`` the worst pair of groups with more than one bin
differs by at most 2x (a 1-channel bin at ``ε = max/1.5`` against a 2-channel bin at the same
``ε``). For a blocked group the bin size is counted in local channels (per block):
``round(β · max ε / (ε_g · blocks))``, at least 1, so its bins may cost more than the others'
when even one channel per block is expensive — that is the graph's constraint, not a choice.
With ``divisor`` d the (local) bin size is rounded *up* to a multiple of d, so every width but
possibly the full one is a multiple of d per block.

**Bins** are contiguous runs of importance positions (see :mod:`.order`): ``[0, b), [b, 2b),
...``; the last may be smaller. ``GroupBins.bin_size`` and ``bounds`` are in local positions
(one block); :meth:`GroupBins.width` gives channels over all blocks.

``mode="uniform"`` is the "uniform groups" baseline of Table 10: ``num_bins`` equal bins per
group, whatever they cost. :func:`bin_spread` measures how uneven a space's FLOPs per bin are.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ConfigError
from ..flops import FlopsModel
from ..graph import ChannelGraph
from .order import validate_order
from .space import GroupBins, SearchSpace

MODES = ("flops", "uniform")
MinWidth = Union[None, int, float]


def sensitivities(graph: ChannelGraph, flops_model: FlopsModel) -> np.ndarray:
    """``ε_g`` of every searchable group (FLOPs per channel), in ``graph.searchable`` order.

    One :meth:`FlopsModel.evaluate` call on ``S + 1`` width vectors: full width, and full width
    with each group narrowed by one channel per block.

    Example:
        >>> eps = sensitivities(graph, FlopsModel(graph))         # doctest: +SKIP
        >>> eps.shape == (len(graph.searchable),)                 # doctest: +SKIP
        True
    """
    groups = graph.searchable
    if not groups:
        return np.zeros(0)
    full = graph.width_vector({})
    blocks = np.array([g.blocks for g in groups], dtype=np.float64)
    W = np.vstack([full, full - np.diag(blocks)])
    f = flops_model.evaluate(W)
    return (f[0] - f[1:]) / blocks


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def _bounds(size: int, step: int) -> Tuple[Tuple[int, int], ...]:
    return tuple((s, min(s + step, size)) for s in range(0, size, step))


def _uniform_bounds(size: int, num_bins: Optional[int], divisor: int) -> Tuple[Tuple[int, int], ...]:
    """``num_bins`` near-equal runs of whole ``divisor`` units (one per unit when None)."""
    units = math.ceil(size / divisor)
    k = units if num_bins is None else max(1, min(int(num_bins), units))
    # Unit boundaries floor(units * i / k): run lengths differ by at most one unit.
    cuts = [min(size, divisor * (units * i // k)) for i in range(k + 1)]
    return tuple((a, b) for a, b in zip(cuts[:-1], cuts[1:]))


def _min_bins(bounds: Sequence[Tuple[int, int]], blocks: int, channels: int, min_width: MinWidth) -> int:
    if min_width is None:
        return 1
    mw = float(min_width)
    if mw <= 0:
        raise ConfigError(f"min_width must be positive, got {min_width}")
    need = math.ceil(mw * channels) if mw < 1 else int(math.ceil(mw))
    for k, (_, stop) in enumerate(bounds, start=1):
        if stop * blocks >= need:
            return k
    return len(bounds)


def make_bins(graph: ChannelGraph, flops_model: FlopsModel, beta: float = 1.0, divisor: int = 1,
              min_width: MinWidth = None, order: Optional[Mapping[int, Sequence[int]]] = None,
              mode: str = "flops", num_bins: Optional[int] = None, offset: int = 1) -> SearchSpace:
    """Bins of every searchable group (see the module docstring for the rules).

    Args:
        graph: the model's channel graph.
        flops_model: its :class:`~cafeslim.flops.FlopsModel` (``ε`` comes from it).
        beta: β of Eq. 9, the bin size of the most sensitive group (fractions such as 0.25 give
            a finer space: every group's bins shrink, down to one channel).
        divisor: bin sizes (per block) are rounded up to a multiple of it.
        min_width: smallest width a sub-network may keep in each group, in channels (``>= 1``)
            or as a fraction of the group (``< 1``); becomes ``min_bins`` (at least 1 bin).
        order: ``{gid: permutation}`` from :func:`~cafeslim.bins.order.channel_order`; the
            natural order when None or for groups not listed.
        mode: ``flops`` (Eq. 9) or ``uniform`` (``num_bins`` equal bins per group, Table 10).
        num_bins: bins per group for ``uniform``; None there means one bin per channel (per
            ``divisor`` channels), the finest space.
        offset: r of Eq. 5, stored on the space.

    Returns:
        A :class:`SearchSpace` with one :class:`GroupBins` per searchable group.

    Raises:
        ConfigError: a non-positive β, divisor, num_bins or offset < 0, an unknown mode, or a
            malformed order.

    Example:
        >>> space = make_bins(graph, FlopsModel(graph), beta=1.0)   # doctest: +SKIP
        >>> space.groups[0].bin_size, space.groups[0].num_bins      # doctest: +SKIP
        (1, 64)
    """
    if mode not in MODES:
        raise ConfigError(f"unknown bin mode {mode!r}; choose from {', '.join(MODES)}")
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    if int(divisor) != divisor or divisor < 1:
        raise ConfigError(f"divisor must be a positive integer, got {divisor}")
    if num_bins is not None and num_bins < 1:
        raise ConfigError(f"num_bins must be positive, got {num_bins}")
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    divisor = int(divisor)
    orders = validate_order(graph, order or {})
    eps = sensitivities(graph, flops_model)
    top = float(eps.max()) if len(eps) else 0.0
    groups: List[GroupBins] = []
    for g, e in zip(graph.searchable, eps):
        size = g.block_size
        if mode == "uniform":
            bounds = _uniform_bounds(size, num_bins, divisor)
            b = bounds[0][1] - bounds[0][0]
        else:
            # A group whose channels cost nothing (fvcore counts none of its ops) gets one bin:
            # searching it cannot change FLOPs.
            b = int(_round_half_up(beta * top / (e * g.blocks))) if e > 0 else size
            b = min(size, max(1, b))
            b = min(math.ceil(b / divisor) * divisor, size) if divisor > 1 else b
            bounds = _bounds(size, b)
        groups.append(GroupBins(
            gid=g.id, channels=size, blocks=g.blocks, sensitivity=float(e), bin_size=int(b),
            bounds=bounds, min_bins=_min_bins(bounds, g.blocks, g.channels, min_width),
            order=orders.get(g.id, tuple(range(size)))))
    return SearchSpace(graph=graph, groups=groups, offset=int(offset), beta=float(beta),
                       divisor=divisor,
                       meta={"mode": mode, "num_bins": num_bins, "max_sensitivity": top,
                             "min_width": min_width})


def channel_space(graph: ChannelGraph, flops_model: FlopsModel, divisor: int = 1,
                  order: Optional[Mapping[int, Sequence[int]]] = None) -> SearchSpace:
    """The finest space: one bin per channel (per block, per ``divisor``) in every group.

    Used for the "Uniform" baseline and export, where widths should not be tied to β.

    Example:
        >>> channel_space(graph, fm).groups[0].num_bins == graph.searchable[0].block_size  # doctest: +SKIP
        True
    """
    return make_bins(graph, flops_model, divisor=divisor, order=order, mode="uniform",
                     num_bins=None, offset=0)


# ------------------------------------------------------------------------- statistics

def flops_per_bin(space: SearchSpace) -> np.ndarray:
    """FLOPs of one (nominal-size) bin of every group: ``ε_g · blocks · bin_size``.

    Linear in ``ε``: the marginal cost at full width times the channels in a bin.

    Example:
        >>> flops_per_bin(space)[:3]                                 # doctest: +SKIP
        array([2872576., 2013312., 2615424.])
    """
    return np.array([g.sensitivity * g.blocks * g.bin_size for g in space.groups], dtype=np.float64)


def bin_spread(space: SearchSpace) -> float:
    """max / min FLOPs per bin over the groups with more than one bin (1.0 with fewer than two).

    Groups with a single bin are left out: they are not searched, and their one bin is as large
    as the group, whatever Eq. 9 asked for.

    Example:
        >>> bin_spread(make_bins(graph, fm, beta=1.0)) <= 2          # doctest: +SKIP
        True
    """
    fpb = flops_per_bin(space)
    keep = (space.num_bins > 1) & (fpb > 0)
    if keep.sum() < 2:
        return 1.0
    return float(fpb[keep].max() / fpb[keep].min())


def n_choices(k: int, num_bins: int, r: int) -> int:
    """How many kept-bin sets width ``k`` of ``num_bins`` has with offset ``r`` (Eq. 5).

    ``C(2r+1, r+1)`` away from the edges; fewer near them. Counted, not enumerated.

    Example:
        >>> n_choices(5, 10, 1), n_choices(10, 10, 1)
        (3, 1)
    """
    base = max(k - r - 1, 0)
    lo, hi = max(k - 1 - r, base, 0), min(k + r, num_bins)
    return math.comb(max(hi - lo, 0), k - base)


def choices_range(group: GroupBins, r: int) -> Tuple[int, int]:
    """(fewest, most) locally free choices over the widths ``min_bins..num_bins`` of a group.

    Example:
        >>> choices_range(space.groups[0], 1)                        # doctest: +SKIP
        (1, 3)
    """
    counts = [n_choices(k, group.num_bins, r) for k in range(group.min_bins, group.num_bins + 1)]
    return min(counts), max(counts)


def aligned_candidates(space: SearchSpace, k: Sequence[int], r: Optional[int] = None) -> int:
    """Number of aligned candidates S_c of width vector ``k`` (max over groups of its choices).

    Example:
        >>> aligned_candidates(space, space.num_bins // 2)           # doctest: +SKIP
        3
    """
    # enumerated through the space, which leaves out sets that swap in a smaller last bin
    return max((len(c) for c in space.choices(k, r)), default=1)


def stage_log10_sizes(graph: ChannelGraph, flops_model: FlopsModel, beta: float, stages: int,
                      alpha: float, **kwargs) -> Tuple[float, List[float]]:
    """Search-space size over multi-stage search, Eq. 14: ``sum_j prod_i bins_ji``, as log10.

    Stage ``j`` (0-based) uses ``β / α^j`` (Eq. 10). Channels are the full model's at every
    stage: the later stages' supernet shrinks to the previous result, which is not known before
    searching, so this is an upper bound of Eq. 14.

    Args:
        graph, flops_model, beta: as for :func:`make_bins`.
        stages: number of stages (1 gives the single-stage size).
        alpha: the bin evolving speed α > 0.
        **kwargs: passed to :func:`make_bins` (divisor, min_width, ...).

    Returns:
        ``(log10 of the total, [log10 of each stage])``.

    Example:
        >>> total, per = stage_log10_sizes(graph, fm, 4.0, 3, 2.0)  # doctest: +SKIP
    """
    if stages < 1:
        raise ConfigError(f"stages must be >= 1, got {stages}")
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    per = [make_bins(graph, flops_model, beta=beta / alpha ** j, **kwargs).log10_size
           for j in range(stages)]
    top = max(per)
    total = top + math.log10(sum(10 ** (p - top) for p in per))
    return total, per


def bins_json(space: SearchSpace, model: str = "") -> Dict[str, object]:
    """The ``inspect-bins --json`` document.

    ``channels`` and ``bin_size`` count channels over all blocks (a blocked group's bin holds
    one run of local channels in every block), so ``bins == ceil(channels / bin_size)``.

    Example:
        >>> bins_json(space, "tv:resnet50")["groups"][0]["bin_size"]   # doctest: +SKIP
        1
    """
    groups = {g.id: g for g in space.graph.groups}
    return {
        "model": model or space.graph.source,
        "beta": space.beta,
        "log10_space": space.log10_size,
        "groups": [{"id": gb.gid, "channels": gb.channels * gb.blocks,
                    "sensitivity": gb.sensitivity, "bin_size": gb.bin_size * gb.blocks,
                    "bins": gb.num_bins, "layers": groups[gb.gid].layers}
                   for gb in space.groups],
    }


__all__ = ["MODES", "aligned_candidates", "bin_spread", "bins_json",
           "channel_space", "choices_range", "flops_per_bin", "make_bins", "n_choices",
           "sensitivities", "stage_log10_sizes"]
