"""FLOPs: fvcore ground truth (:mod:`.count`) and the analytic width model (:mod:`.model`).

Example:
    >>> from cafeslim.flops import FlopsModel, count_flops
    >>> fm = FlopsModel(graph, model, x)                        # doctest: +SKIP
    >>> fm.evaluate(W)            # [N] FLOPs of N width vectors  # doctest: +SKIP
"""

from .count import count_flops, count_flops_by_module, count_params
from .model import FlopsModel

__all__ = ["FlopsModel", "count_flops", "count_flops_by_module", "count_params"]
