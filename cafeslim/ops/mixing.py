"""Ops that mix channels with each other: matmul, einsum, softmax over channels, shuffles."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..graph.rules import passthrough
from ..graph.state import Desc
from .elementwise import fix_through, module_without_tensor, tensor_output
from .forms import numel, tensors
from .registry import Cost, Form, FormFn, OpHandler, OpKind, add_handler


def _name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


class _Attention(nn.Module):
    """Tokens from a conv, a softmax(q k^T) v attention, and a conv back (for the tests)."""

    def __init__(self, use_einsum: bool):
        super().__init__()
        self.use_einsum = use_einsum
        self.stem, self.qkv, self.proj = nn.Conv2d(3, 6, 2, 2), nn.Linear(6, 12), nn.Linear(4, 6)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).split([4, 4, 4], dim=-1)
        if self.use_einsum:
            a = torch.einsum("bnc,bmc->bnm", q, k).softmax(-1)
            return self.proj(torch.einsum("bnm,bmc->bnc", a, v)).mean(1)
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj(torch.bmm(a, v)).mean(1)


class MatmulHandler(OpHandler):
    """Matrix products contract the channel axis: their operands' groups are fixed."""

    functions = ("matmul", "mm", "bmm", "baddbmm", "addmm", "scaled_dot_product_attention")
    kinds = (OpKind.MATMUL,)

    def trace(self, ctx, node, module=None):
        name = _name(node)
        ctx.kind, ctx.attrs = OpKind.MATMUL, {"op": name, "equation": None}
        return fix_through(ctx, node, f"{name} mixes tensors along the channel axis")

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        ins = tensors(op)
        name = str(op.attrs.get("op", "matmul")).lower().rsplit(".", 1)[-1].replace("aten::", "").strip("_")
        if name in ("addmm",):
            ins = ins[-2:]           # addmm(bias, m1, m2): addmm_flop_jit ignores the bias
        elif name == "rmatmul":
            ins = ins[::-1]
        elif name not in ("matmul", "mm", "bmm", "@"):
            return None              # baddbmm, addbmm, mv, dot, ...: no fvcore handle
        # matmul_flop_jit / bmm_flop_jit: numel(A) * B.shape[-1].
        A, B = ins[0], ins[1]
        return 1.0, numel(A, form) + [form(B, len(B.shape) - 1)]

    def example(self):
        return _Attention(False), torch.randn(1, 3, 8, 8)


class EinsumHandler(OpHandler):
    """einsum: like a matmul for channels; costed with fvcore's einsum formula."""

    functions = ("einsum",)
    kinds = (OpKind.EINSUM,)

    def trace(self, ctx, node, module=None):
        ctx.kind, ctx.attrs = OpKind.EINSUM, {"op": "einsum", "equation": node.args[0]}
        return fix_through(ctx, node, "einsum mixes tensors along the channel axis")

    def constant_cost(self, op) -> bool:
        # einsum(eq, [a, b]) passes its operands in a list, which the record does not hold.
        lhs = str(op.attrs.get("equation") or "").split("->")[0]
        return not lhs or len(tensors(op)) < len(lhs.split(","))

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        return einsum_cost(str(op.attrs["equation"]), tensors(op), form)

    def example(self):
        return _Attention(True), torch.randn(1, 3, 8, 8)


def einsum_cost(equation: str, ins: Sequence, form: FormFn) -> Optional[Cost]:
    """einsum_flop_jit: the product of every index size for two-operand contractions.

    fvcore asks numpy's optimal path for its FLOP count and halves it; for one contraction that
    is ``prod(all index sizes) * op_factor / 2`` (op_factor 2 with a summed index), printed with
    4 significant digits. The factor is taken at full size, so the (at most 0.05 %) rounding and,
    for three or more operands, a path that would change with the widths are not modelled.
    """
    eq = equation.replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    sizes: Dict[str, Form] = {}
    full: Dict[str, int] = {}
    for spec, d in zip(lhs, ins):
        n_ell = len(d.shape) - (len(spec) - (3 if "..." in spec else 0))
        letters = spec.replace("...", "".join(chr(0x100 + i) for i in range(max(n_ell, 0))))
        for dim, ch in enumerate(letters):
            if ch not in sizes or full[ch] == 1:    # broadcast size-1 dims defer to the real one
                sizes[ch] = form(d, dim)
                full[ch] = d.shape[dim]
    if len(lhs) == 2 and _canonical(eq) in ("abc,abd->acd", "abc,adc->adb"):
        return 1.0, list(sizes.values())         # fvcore's exact special cases
    arrays = [np.zeros(d.shape) for d in ins[:len(lhs)]]
    text = np.einsum_path(eq, *arrays, optimize="optimal")[1]
    counted = next(float(line.split(":")[-1]) for line in text.split("\n")
                   if "optimized flop" in line.lower())
    prod = float(math.prod(full.values()))
    return math.floor(counted / 2) / prod if prod else 0.0, list(sizes.values())


def _canonical(eq: str) -> str:
    order = OrderedDict((k, 0) for k in eq if k.isalpha()).keys()
    return eq.translate({ord(x): 97 + i for i, x in enumerate(order)})


class ChannelMixingHandler(OpHandler):
    """softmax / normalize / cumsum: over the channel axis they fix it, elsewhere pass through."""

    modules = (nn.Softmax, nn.LogSoftmax)
    functions = ("softmax", "log_softmax", "normalize", "local_response_norm", "cumsum")

    def trace(self, ctx, node, module=None):
        if module is not None:
            if not tensor_output(node):
                return module_without_tensor(ctx, node, module)
            dim = module.dim
        else:
            default = 1 if _name(node) == "normalize" else None
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", default)
        x = ctx.value(node.args[0])
        if isinstance(x, Desc) and (dim is None or dim % len(x.shape) == x.axis):
            return fix_through(ctx, node, f"{_name(node)} over the channel axis")
        return passthrough(ctx, node)

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.c, self.b = nn.Conv2d(3, 6, 3), nn.Conv2d(3, 5, 3), nn.Conv2d(6, 4, 1)
                self.sm = nn.Softmax(dim=-1)

            def forward(self, x):
                y = self.sm(self.a(x)).cumsum(2)      # over spatial axes: a's channels stay searchable
                z = torch.nn.functional.normalize(self.c(x), dim=1).softmax(1)   # over channels: fixed
                return self.b(y) + z.sum(1, keepdim=True)
        return Net(), torch.randn(1, 3, 8, 8)


class ChannelShuffleHandler(OpHandler):
    """A channel shuffle interleaves groups: its channels are fixed."""

    functions = ("channel_shuffle",)

    def trace(self, ctx, node, module=None):
        return fix_through(ctx, node, "channel shuffle")

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.c = nn.Conv2d(3, 6, 3), nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)

            def forward(self, x):
                y = torch.nn.functional.channel_shuffle(self.a(x), 2)
                return self.c(self.b(x)) + y.sum(1, keepdim=True)
        return Net(), torch.randn(1, 3, 8, 8)


class GridSampleHandler(OpHandler):
    """``grid_sample`` records of kind ``other``: fvcore's grid_sampler counts 4 per output element."""

    kinds = ("other:grid_sample",)

    def cost(self, op, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        return 4.0, numel(op.output, form)

    def example(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1)

            def forward(self, x):
                y = self.b(self.a(x))
                grid = torch.zeros(1, 3, 3, 2)
                return torch.nn.functional.grid_sample(y, grid, align_corners=False)
        return Net(), torch.randn(1, 3, 8, 8)


for _h in (MatmulHandler(), EinsumHandler(), ChannelMixingHandler(), ChannelShuffleHandler(), GridSampleHandler()):
    add_handler(_h)
