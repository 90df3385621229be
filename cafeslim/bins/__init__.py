"""The search space: FLOPs-sensitive bins (Eq. 6-9), channel order, locally free candidates
(Eq. 5) and FLOPs budgets.

Example:
    >>> from cafeslim.bins import make_bins, parse_budget, random_widths
    >>> space = make_bins(graph, fm, beta=1.0)                          # doctest: +SKIP
    >>> budget = parse_budget("50%", fm.full, min_space_flops(space, fm))  # doctest: +SKIP
    >>> K = random_widths(space, fm, budget, 2000, np.random.default_rng(0))  # doctest: +SKIP
"""

from .budget import (DEFAULT_LOW, human_flops, min_space_flops, parse_budget, random_widths,
                     space_flops, uniform_widths)
from .make import (aligned_candidates, bin_spread, bins_json, channel_space, choices_range,
                   flops_per_bin, make_bins, n_choices, sensitivities, stage_log10_sizes)
from .order import ORDERS, ChannelOrder, channel_order, channel_scores, validate_order
from .space import GroupBins, SearchSpace, bin_choices

__all__ = [
    "DEFAULT_LOW", "ORDERS", "ChannelOrder", "GroupBins", "SearchSpace", "aligned_candidates",
    "bin_choices", "bin_spread", "bins_json", "channel_order", "channel_scores", "channel_space",
    "choices_range", "flops_per_bin", "human_flops", "make_bins", "min_space_flops", "n_choices",
    "parse_budget", "random_widths", "sensitivities", "space_flops", "stage_log10_sizes",
    "uniform_widths", "validate_order",
]
