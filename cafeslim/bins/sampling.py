"""Where min-min training samples its widths: uniform over the bins, or inside the budgets.

The paper's min-min step samples every group's width uniformly over its bins (Eq. 1). The
FLOPs of such a vector concentrate far below the middle: for torchvision ResNet-50 the mean
sampled sub-network has about a quarter of the full FLOPs and next to none of 1000 draws lands
in a 50 % window (measured numbers in ``docs/design.md``), so the supernet is trained least
where the search looks. :class:`WidthSampler` offers three modes (``MinMinConfig.sampling``):

* ``uniform`` — Eq. 1, exactly :meth:`SearchSpace.sample` (the default);
* ``budget`` — a vector of the FLOPs window ``[low · B, B]`` of one of the run's budgets (and
  of every multi-stage stage's budget), drawn with the search's own window sampler
  :func:`~cafeslim.bins.budget.random_widths`;
* ``mixed`` — ``budget`` with probability ``sampling_mix``, else ``uniform``.

Window sampling costs far more than one step can afford, so each budget's vectors are drawn
once into a pool (``pool`` vectors, seeded by the run's seed, so a resumed run and every DDP
rank build the same pool); a step then only draws pool indices from the step's rng. Both keep
resume bit-exact and all ranks training the same widths.

Example:
    >>> sampler = WidthSampler(space, fm, [0.5 * fm.full], mode="budget", seed=0)  # doctest: +SKIP
    >>> k = sampler.sample(np.random.default_rng(0))                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError
from .budget import DEFAULT_LOW, random_widths, space_flops
from .space import SearchSpace

MODES = ("uniform", "budget", "mixed")
POOL = 1024


class WidthSampler:
    """Draws the width vector of a min-min step (see the module docstring for the modes).

    Args:
        space: the search space the supernet trains.
        fm: its FLOPs model.
        budgets: FLOPs budgets whose windows ``budget``/``mixed`` sample (ignored by
            ``uniform``); budgets below the space's smallest model are skipped.
        mode: ``uniform``, ``budget`` or ``mixed``.
        mix: the budget fraction of ``mixed``.
        low: the window's lower end, as a fraction of the budget (the search's).
        seed: seeds the pools (not the steps: those use the step's rng).
        pool: vectors pre-drawn per budget.

    Raises:
        ConfigError: an unknown mode, a mix outside [0, 1], or ``budget``/``mixed`` without a
            budget the space can reach.

    Example:
        >>> s = WidthSampler(space, fm, [], mode="uniform")                        # doctest: +SKIP
        >>> s.sample(rng).shape                                                    # doctest: +SKIP
        (11,)
    """

    def __init__(self, space: SearchSpace, fm: object, budgets: Sequence[float] = (), *,
                 mode: str = "uniform", mix: float = 0.5, low: float = DEFAULT_LOW,
                 seed: int = 0, pool: int = POOL) -> None:
        if mode not in MODES:
            raise ConfigError(f"sampling must be one of {', '.join(MODES)}, not {mode!r}")
        if not 0.0 <= mix <= 1.0:
            raise ConfigError(f"sampling_mix must be in [0, 1], got {mix}")
        self.space, self.fm, self.mode, self.mix = space, fm, mode, float(mix)
        self.pools: list = []
        if mode != "uniform":
            smallest = float(space_flops(space, fm, space.min_bins)[0])
            for j, budget in enumerate(sorted(set(float(b) for b in budgets))):
                if budget < smallest:
                    continue  # a later stage's budget may be below an earlier stage's space
                rng = np.random.default_rng([int(seed), 0x5AB1E, j])
                self.pools.append(random_widths(space, fm, budget, pool, rng, low=low))
            if not self.pools:
                raise ConfigError(f"--sampling {mode} needs a FLOPs budget this space can reach")
        self.full = float(space_flops(space, fm, space.num_bins)[0])

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One width vector (``[S]`` bin counts), drawn with ``rng`` only.

        ``uniform`` consumes exactly what :meth:`SearchSpace.sample` does, so a run with the
        default is the same as before the sampler existed.
        """
        if self.mode == "uniform" or (self.mode == "mixed" and not rng.random() < self.mix):
            return self.space.sample(rng, 1)[0]
        pool = self.pools[int(rng.integers(len(self.pools)))]
        return pool[int(rng.integers(len(pool)))].copy()

    def flops_fraction(self, k: Sequence[Sequence[int]]) -> np.ndarray:
        """FLOPs of width vectors ``k`` ([N, S]) as a fraction of the full space's.

        Example:
            >>> WidthSampler(space, fm).flops_fraction([space.num_bins])           # doctest: +SKIP
            array([1.])
        """
        return space_flops(self.space, self.fm, np.asarray(k, dtype=np.int64)) / self.full


def make_sampler(space: SearchSpace, fm: object, budgets: Sequence[float], cfg: object,
                 seed: int, low: float = DEFAULT_LOW) -> Optional[WidthSampler]:
    """The sampler a :class:`~cafeslim.config.MinMinConfig` asks for (None without a FLOPs model).

    Example:
        >>> make_sampler(space, fm, [2e9], MinMinConfig(sampling="mixed"), seed=0).mode  # doctest: +SKIP
        'mixed'
    """
    if fm is None:
        return None
    return WidthSampler(space, fm, budgets, mode=getattr(cfg, "sampling", "uniform"),
                        mix=getattr(cfg, "sampling_mix", 0.5), low=low, seed=seed)


__all__ = ["MODES", "POOL", "WidthSampler", "make_sampler"]
