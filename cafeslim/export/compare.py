"""Comparing model outputs leaf by leaf: tensors, and dict/list/tuple structures of them.

``check`` compares every tensor leaf of a structured output (a segmentation model's
``{"out", "aux"}``, an FPN's levels, a detector's per-image dicts), each on its own scale.
"""

from __future__ import annotations

from typing import Any, List

import torch

from .formats import max_abs_diff, output_scale


def leaf_names(out: Any) -> List[str]:
    """Names of the tensor leaves of a (nested dict/list/tuple) output, in comparison order.

    Example:
        >>> leaf_names({"out": torch.zeros(1), "aux": torch.zeros(1)})
        ["['out']", "['aux']"]
        >>> leaf_names(torch.zeros(1))
        ['output']
    """
    from torch.utils import _pytree as pytree

    if isinstance(out, torch.Tensor):
        return ["output"]
    flat, _ = pytree.tree_flatten_with_path(out)
    return [pytree.keystr(path) for path, leaf in flat if isinstance(leaf, torch.Tensor)]


def rel_diff(a: Any, b: Any, worst: str = "max") -> float:
    """Difference of two outputs, leaf by leaf, relative to the scale of each leaf of ``a``.

    Every tensor leaf of a dict/list/tuple output is compared on its own scale (a small
    auxiliary output is not hidden by a large main one); ``worst`` says whether the largest
    (a difference that must be small) or the smallest (a change that must be large, on
    every leaf) counts. A leaf's scale is floored at 1e-6 of the whole output's.

    Raises:
        ExportError: a different number or shape of leaves.

    Example:
        >>> rel_diff({"out": torch.ones(2)}, {"out": torch.full((2,), 1.5)})
        0.5
    """
    from torch.utils import _pytree as pytree

    mine = [t for t in pytree.tree_leaves(a) if isinstance(t, torch.Tensor)]
    other = [t for t in pytree.tree_leaves(b) if isinstance(t, torch.Tensor)]
    max_abs_diff(mine, other)  # raises on a different number or shape of leaves
    floor = max(output_scale(a) * 1e-6, 1e-12)
    rels = [max_abs_diff(x, [y]) / max(output_scale(x), floor) for x, y in zip(mine, other)]
    if not rels:
        return 0.0
    return max(rels) if worst == "max" else min(rels)


__all__ = ["leaf_names", "rel_diff"]
