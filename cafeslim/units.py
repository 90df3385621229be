"""Numbers for people: one formatter of FLOPs and parameter counts (no torch import).

Example:
    >>> human(4_111_514_624), human(512)
    ('4.11G', '512')
"""

from __future__ import annotations


def human(n: float) -> str:
    """Short count with a metric suffix: ``4.11G``, ``25.56M``, ``512`` (a multiply-add is one FLOP).

    Example:
        >>> human(2.05e9)
        '2.05G'
    """
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


__all__ = ["human"]
