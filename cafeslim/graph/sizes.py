"""Channel counts read off tensors (``B, C, H, W = x.shape``) and where forward code uses them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch.fx as fx

from .rules import Ctx
from .state import Desc


@dataclass(frozen=True)
class SizeOf:
    """A python number computed from a channel axis' size (``C`` in ``B, C, H, W = x.shape``).

    ``exact`` is False once arithmetic has been applied to it.
    """

    desc: Desc
    exact: bool


def shape_value(ctx: Ctx, node: fx.Node, name: str):
    """``x.shape`` / ``x.size(d)``: sizes, with the channel axis' one as a :class:`SizeOf`."""
    x = ctx.value(node.args[0])
    if not isinstance(x, Desc):
        return None
    sizes = tuple(SizeOf(x, True) if i == x.axis else None for i in range(len(x.shape)))
    if name == "getattr":
        return sizes if node.args[1] == "shape" else None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return sizes if dim is None else sizes[dim % len(sizes)]


def flat_values(ctx: Ctx, node: fx.Node) -> Iterator[Any]:
    """Every argument value of a call, looking inside lists and tuples."""
    vals = [ctx.value(a) for a in node.args] + [ctx.value(v) for v in node.kwargs.values()]
    stack = list(vals)
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        else:
            yield v


def non_tensor_value(ctx: Ctx, node: fx.Node) -> Optional[SizeOf]:
    """Python arithmetic on sizes: a channel count stays one, but no longer exactly."""
    sizes = [v for v in flat_values(ctx, node) if isinstance(v, SizeOf)]
    return SizeOf(sizes[0].desc, False) if sizes else None


def size_uses(ctx: Ctx, node: fx.Node, value, shape_args: Optional[Sequence[Any]], name: str) -> None:
    """A channel count used in forward code must follow the width, or the group is fixed.

    ``x.reshape(B, C, H * W)`` with ``C`` read off a tensor of the same channels is fine
    (the two are coupled: ``shape_args`` is the target shape the op's handler found); the same
    ``C`` anywhere else (a reshape of an attention output, a ``torch.zeros(C)``, a slice bound)
    would stay the old number after slimming.
    """
    coupled = set()
    if shape_args is not None and isinstance(value, Desc):
        for j, v in enumerate(shape_args):
            if isinstance(v, SizeOf) and v.exact and j == value.axis:
                ctx.state.merge(v.desc, value)
                coupled.add(id(v))
    for v in flat_values(ctx, node):
        if isinstance(v, SizeOf) and id(v) not in coupled:
            ctx.state.fix(v.desc.segs, f"channel count used as a constant in forward code ({name})")
