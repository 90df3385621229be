"""Ops that move, join or cut the channel axis: reshapes, permutes, cat, split, indexing, sizes.

The channel rules themselves live in ``graph/structure.py`` (they share its layout helpers);
the handlers here say which names and modules they apply to.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..graph import structure
from ..graph.sizes import non_tensor_value, shape_value
from .elementwise import module_without_tensor, tensor_output
from .registry import OpHandler, add_handler


def _name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _conv_net(body) -> nn.Module:
    """conv -> ``body(y)`` -> conv, so that the body's groups are searchable when it is right."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1)

        def forward(self, x):
            return self.b(body(self.a(x)))
    return Net()


class ReshapeHandler(OpHandler):
    """view / reshape / flatten / (un)squeeze: the channel axis is followed through."""

    modules = (nn.Flatten,)
    functions = ("view", "reshape", "flatten", "view_as", "reshape_as", "unsqueeze", "squeeze",
                 "unflatten", "unsqueeze_", "squeeze_")

    def trace(self, ctx, node, module=None):
        if module is not None and not tensor_output(node):
            return module_without_tensor(ctx, node, module)
        return structure.reshape(ctx, node)

    def shape_args(self, ctx, node: fx.Node) -> Optional[Sequence[Any]]:
        if _name(node) not in ("view", "reshape"):
            return None
        return _target_shape(ctx, node)

    def example(self):
        return _conv_net(lambda y: y.reshape(y.shape[0], y.shape[1], -1).unsqueeze(-1).flatten(2)
                         .view(y.shape)), torch.randn(1, 3, 8, 8)


def _target_shape(ctx, node: fx.Node) -> Sequence[Any]:
    rest = [ctx.value(a) for a in node.args[1:]]
    shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
    if "shape" in node.kwargs or "size" in node.kwargs:
        shape = ctx.value(node.kwargs.get("shape", node.kwargs.get("size")))
    return shape


class PermuteHandler(OpHandler):
    """permute / transpose / movedim: the channel axis moves with its dimension."""

    functions = ("permute", "transpose", "swapaxes", "swapdims", "t", "movedim")

    def trace(self, ctx, node, module=None):
        return structure.permute(ctx, node, _name(node))

    def example(self):
        return _conv_net(lambda y: y.permute(0, 2, 3, 1).transpose(1, 3).movedim(2, 3)), torch.randn(1, 3, 8, 8)


class ExpandHandler(OpHandler):
    """expand: broadcasting other axes keeps channels."""

    functions = ("expand", "expand_as")

    def trace(self, ctx, node, module=None):
        return structure.expand(ctx, node)

    def shape_args(self, ctx, node: fx.Node) -> Optional[Sequence[Any]]:
        return _target_shape(ctx, node) if _name(node) == "expand" else None

    def example(self):
        return _conv_net(lambda y: y[:, :, :1].expand(-1, y.shape[1], 6, -1) + y), torch.randn(1, 3, 8, 8)


class CatHandler(OpHandler):
    """cat on the channel axis lays groups side by side; stack and other axes couple them."""

    functions = ("cat", "concat", "concatenate", "stack")

    def trace(self, ctx, node, module=None):
        return structure.cat(ctx, node, stack=_name(node) == "stack")

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.c = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 2, 3), nn.Conv2d(6, 4, 1)

            def forward(self, x):
                y = torch.cat([self.a(x), self.b(x)], 1)
                return self.c(torch.stack([y, y], 0).sum(0))
        return Net(), torch.randn(1, 3, 8, 8)


class SplitHandler(OpHandler):
    """split / chunk / unbind: a cut of the channel axis makes the pieces separate groups."""

    functions = ("split", "chunk", "unbind", "tensor_split", "split_with_sizes")

    def trace(self, ctx, node, module=None):
        name = _name(node)
        return structure.split(ctx, node, "split" if name == "split_with_sizes" else name)

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(4, 4, 1)

            def forward(self, x):
                p, q = self.a(x).chunk(2, dim=1)
                return self.b(p * q.sigmoid())
        return Net(), torch.randn(1, 3, 8, 8)


class GetitemHandler(OpHandler):
    """Indexing: of a tuple picks a value; of a tensor keeps, moves or slices the channel axis."""

    functions = ("getitem",)
    tensor_only = False

    def trace(self, ctx, node, module=None):
        return structure.getitem(ctx, node)

    def example(self):
        return _conv_net(lambda y: y[:, :, 1:-1, None][..., 0, :]), torch.randn(1, 3, 8, 8)


class SizeHandler(OpHandler):
    """``x.shape`` / ``x.size()``: channel counts become values the forward code may use."""

    functions = ("getattr", "size")
    tensor_only = False
    uses_sizes = False

    def trace(self, ctx, node, module=None):
        return shape_value(ctx, node, _name(node))

    def example(self):
        return _conv_net(lambda y: y.view(y.size(0), y.shape[1], -1).view(y.shape)), torch.randn(1, 3, 8, 8)


class NonTensorHandler(OpHandler):
    """Calls returning python values (``x.dim()``, ``torch._assert``): sizes flow through them."""

    functions = ("dim", "numel", "_assert", "ndimension", "is_contiguous", "element_size", "get_device",
                 "_assert_async")
    tensor_only = False

    def trace(self, ctx, node, module=None):
        return non_tensor_value(ctx, node)

    def example(self):
        return _conv_net(lambda y: y * (y.dim() - 3)), torch.randn(1, 3, 8, 8)


for _h in (ReshapeHandler(), PermuteHandler(), ExpandHandler(), CatHandler(), SplitHandler(), GetitemHandler(),
           SizeHandler(), NonTensorHandler()):
    add_handler(_h)
