"""Analytic FLOPs of any width vector, exact with respect to fvcore's count of the slimmed model.

Every size of every traced tensor is either a constant (batch, spatial, tokens, a fixed group) or,
on the channel axis, a *linear form* of the searchable widths: ``inner * sum(width(g))`` over the
groups laid along the axis. Each op that fvcore counts costs a coefficient times a product of
sizes (conv: ``N * out * in/groups * prod(kernel) * prod(spatial)``, linear:
``numel(x) * out``, batch norm: ``numel(x) * 2``, ...), so the cost of the whole network is a
polynomial in the widths: ``sum_t coef_t * prod_k (a_tk . w + c_tk)``. The polynomial is built
once from :attr:`ChannelGraph.ops` with fvcore's own formulas (``fvcore/nn/jit_handles.py``),
so nothing is fitted, and evaluated for many width vectors at once with numpy.

Ops graph analysis does not understand (``opaque``) keep fixed inputs and outputs, so their cost
is a constant, measured once with fvcore when the model is given.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
from torch import nn

from ..errors import SpecError, TraceError
from ..graph.channel_graph import ChannelGraph, OpRecord, TensorDesc
from ..ops.registry import Cost, Form, is_constant_cost, op_cost
from .count import Inputs, count_flops_by_module

# Each op's cost formula (fvcore's jit_handles.py) lives with its handler in cafeslim/ops.


class FlopsModel:
    """FLOPs of the sub-network at any widths, as fvcore would count the slimmed model.

    Args:
        graph: result of :func:`cafeslim.graph.analyze`.
        model, example_input: the analysed model and its input. Only needed when the graph has
            ``opaque`` ops, whose constant cost is then measured with fvcore; without them
            such ops count as zero and are listed in :attr:`unknown_opaque`.

    Attributes:
        searchable: ids of the searchable groups, the column order of :meth:`evaluate`.
        constant: FLOPs that do not depend on any width (fixed layers and opaque modules).
        unknown_opaque: opaque ops whose cost could not be measured (no model given).
        remainders: module -> constant FLOPs charged to the opaque ops that ran in it (fvcore's
            count of the module minus everything costed inside it).

    Example:
        >>> graph = analyze(model, x)                           # doctest: +SKIP
        >>> fm = FlopsModel(graph, model, x)                    # doctest: +SKIP
        >>> fm.full                                             # doctest: +SKIP
        4111512576.0
        >>> fm.flops({g.id: g.channels // 2 for g in graph.searchable}) / fm.full  # doctest: +SKIP
        0.28...
    """

    def __init__(self, graph: ChannelGraph, model: Optional[nn.Module] = None,
                 example_input: Optional[Inputs] = None) -> None:
        self.graph = graph
        self.searchable: List[int] = [g.id for g in graph.searchable]
        self._col = {gid: i for i, gid in enumerate(self.searchable)}
        self._full_w = graph.width_vector({}) if self.searchable else np.zeros(0)
        self.unknown_opaque: List[str] = []
        self.remainders: Dict[str, float] = {}
        self.fvcore_full: Optional[float] = None
        # (module that ran it, cost) of every op fvcore counts, opaque remainders included.
        self._op_costs: List[Tuple[str, Cost]] = []
        modules = dict(model.named_modules()) if model is not None else {}
        opaque, notrace = [], _notrace_names()
        for op in graph.ops:
            if is_constant_cost(op, notrace):
                opaque.append(op)
                continue
            cost = op_cost(op, self._form, modules)
            if cost is not None:
                self._check_full(op)
                self._op_costs.append((op.module, cost))
        per = None
        if model is not None and example_input is not None:
            per = count_flops_by_module(model, example_input)
            self.fvcore_full = float(per.get("", 0))
        self._opaque_costs(opaque, per)
        self._compile()
        if per is not None:
            self._verify(per)

    # ---------------------------------------------------------------- building the polynomial

    def _form(self, desc: TensorDesc, dim: int) -> Form:
        """Size of ``desc`` along ``dim`` as a linear form of the searchable widths."""
        dim = dim % len(desc.shape)
        if desc.axis is None or dim != desc.axis or not desc.groups:
            return (), float(desc.shape[dim])
        coef: Dict[int, float] = {}
        const = 0.0
        for gid in desc.groups:
            if gid in self._col:
                coef[self._col[gid]] = coef.get(self._col[gid], 0.0) + desc.inner
            else:
                const += desc.inner * self.graph.groups[gid].channels
        return tuple(sorted(coef.items())), const

    def _value(self, form: Form, w: np.ndarray) -> float:
        return sum(a * w[i] for i, a in form[0]) + form[1]

    def _check_full(self, op: OpRecord) -> None:
        # At full width every form must give back the traced size; if not, the op's tensor
        # descriptions disagree with their shapes and no width vector could be costed right.
        for d in (op.output, *op.inputs):
            if d is not None and d.axis is not None and d.groups:
                f = self._form(d, d.axis)
                if abs(self._value(f, self._full_w) - d.shape[d.axis]) > 1e-6:
                    raise TraceError(
                        f"op {op.node} ({op.kind}): channel groups {d.groups} x{d.inner} do not add "
                        f"up to size {d.shape[d.axis]} on axis {d.axis}")

    def _full_cost(self, cost: Cost) -> float:
        coef, forms = cost
        return coef * math.prod(self._value(f, self._full_w) for f in forms)

    def _opaque_costs(self, opaque: List[OpRecord], per: Optional[Mapping[str, int]]) -> None:
        """Constant costs of opaque ops (their tensors are fixed), from fvcore's module counts."""
        if not opaque:
            return
        if per is None:
            self.unknown_opaque = [op.node for op in opaque]
            return
        # fvcore can isolate a module's subtree but not a single function call, and graph
        # analysis names the module an opaque op ran in (the leaf itself for a module call, the
        # caller for a function). So each such module is charged its fvcore count minus
        # everything already costed inside it, deepest first so that nested charges are not
        # counted twice. For a leaf module this is exactly its own count (all of its calls);
        # for a function it is the function's count (plus, at full width, any error of the
        # analytic costs in that module, which `remainders` exposes for diagnosis).
        where = {op.attrs.get("module", op.module) or "" for op in opaque}
        for mod in sorted(where, key=lambda m: -m.count(".") - bool(m)):
            inside = [c for m, c in self._op_costs if not mod or m == mod or m.startswith(mod + ".")]
            rest = float(per.get(mod, 0)) - float(sum(self._full_cost(c) for c in inside))
            self.remainders[mod] = rest
            self._op_costs.append((mod, (rest, [])))

    def _verify(self, per: Mapping[str, int]) -> None:
        """Warn, naming the innermost modules at fault, when the full width disagrees with fvcore.

        An op kind that graph analysis records under a name this model does not cost (or a
        new fvcore handle) would otherwise go unnoticed until a slimmed model is counted.
        """
        if abs(self.full - self.fvcore_full) <= 1e-3 * max(self.fvcore_full, 1.0):
            return
        ours = self.by_module()
        subtree: Dict[str, float] = {}
        for name, v in ours.items():
            parts = name.split(".") if name else []
            for i in range(len(parts) + 1):
                key = ".".join(parts[:i])
                subtree[key] = subtree.get(key, 0.0) + v
        off = {m: per[m] - subtree.get(m, 0.0) for m in per if abs(per[m] - subtree.get(m, 0.0)) > 0.5}
        inner = sorted((m for m in off if not any(o != m and (not m or o.startswith(m + ".")) for o in off)),
                       key=lambda m: -abs(off[m]))
        detail = ", ".join(f"'{m}' (fvcore {per[m]:,}, here {per[m] - off[m]:,.0f})" for m in inner[:3])
        warnings.warn(f"FlopsModel gives {self.full:,.0f} FLOPs at full width, fvcore {self.fvcore_full:,.0f} "
                      f"({(self.full - self.fvcore_full) / self.fvcore_full:+.2%}); differs in {detail}",
                      stacklevel=3)

    def _compile(self) -> None:
        """Expand the products into ``const + b.w + w.H.w`` plus any higher-degree terms.

        Almost every op multiplies at most two channel sizes (conv/linear: in x out), so the
        polynomial is a quadratic in the widths and :meth:`evaluate` is two small matrix products.
        Coefficients and forms are non-negative, so the expansion loses no precision. Products of
        three or more forms (an einsum or matmul over several channel axes) stay as products.
        """
        S = len(self.searchable)
        const, b, H = 0.0, np.zeros(S), np.zeros((S, S))
        dense = lambda lin: np.bincount([i for i, _ in lin], [x for _, x in lin], minlength=S)
        forms: Dict[Form, int] = {}
        higher: Dict[Tuple[int, ...], float] = {}
        for _, (coef, fs) in self._op_costs:
            var = []
            for f in fs:
                if f[0]:
                    var.append(f)
                else:                  # a constant size: fold into the coefficient
                    coef *= f[1]
            if coef == 0.0:
                continue
            if not var:
                const += coef
            elif len(var) == 1:
                b += coef * dense(var[0][0])
                const += coef * var[0][1]
            elif len(var) == 2:
                (l1, c1), (l2, c2) = var
                a1, a2 = dense(l1), dense(l2)
                H += coef * np.outer(a1, a2)
                b += coef * (c2 * a1 + c1 * a2)
                const += coef * c1 * c2
            else:
                k = tuple(sorted(forms.setdefault(f, len(forms)) for f in var))
                higher[k] = higher.get(k, 0.0) + coef
        self._const, self._b = const, b
        self._H = (H + H.T) / 2        # symmetric: same value, and lets callers read gradients
        self._A = np.zeros((S, len(forms)))
        self._c = np.zeros(len(forms))
        for (lin, c), j in forms.items():
            self._A[:, j] = dense(lin)
            self._c[j] = c
        by_arity: Dict[int, List[Tuple[Tuple[int, ...], float]]] = {}
        for k, coef in higher.items():
            by_arity.setdefault(len(k), []).append((k, coef))
        self._terms = [(np.array([k for k, _ in ts], dtype=np.intp).T, np.array([c for _, c in ts]))
                       for ts in by_arity.values()]
        self.constant = sum(self._full_cost(c) for _, c in self._op_costs if not any(f[0] for f in c[1]))
        self.full = float(self.evaluate(self._full_w[None])[0])

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, W: np.ndarray, chunk: Optional[int] = None) -> np.ndarray:
        """FLOPs of many width vectors at once.

        Args:
            W: ``[N, S]`` widths, columns in :attr:`searchable` order (``S`` may be 0).
            chunk: rows per block (default: about 2**19 / S**2). Small blocks stay in cache
                and keep OpenBLAS single-threaded, which on a busy 2-core machine was 5-20x
                faster than one large threaded product.

        Returns:
            ``[N]`` float64 FLOPs.

        Example:
            >>> W = np.tile(graph.width_vector({}), (1000, 1)) * 0.5   # doctest: +SKIP
            >>> fm.evaluate(W).shape                                    # doctest: +SKIP
            (1000,)
        """
        W = np.asarray(W, dtype=np.float64)
        if W.ndim != 2 or W.shape[1] != len(self.searchable):
            raise SpecError(f"width matrix must be [N, {len(self.searchable)}], got {list(W.shape)}")
        out = np.empty(W.shape[0])
        chunk = chunk or int(np.clip(2**19 // max(W.shape[1] ** 2, 1), 64, 8192))
        for s in range(0, W.shape[0], chunk):
            w = W[s:s + chunk]
            acc = np.einsum("ij,ij->i", w @ self._H, w)
            acc += w @ self._b
            acc += self._const
            if self._terms:
                V = w @ self._A + self._c                  # the forms of higher terms, [n, F]
                for idx, coef in self._terms:              # idx: [arity, T]
                    prod = V[:, idx[0]]
                    for row in idx[1:]:
                        prod = prod * V[:, row]
                    acc += prod @ coef
            out[s:s + chunk] = acc
        return out

    def vector(self, widths: Mapping[int, int]) -> np.ndarray:
        """Width vector in :attr:`searchable` order (absent groups at full width).

        Raises:
            SpecError: an unknown group, a fixed group below its width, or a width outside
                ``[1, channels]``.
        """
        for gid, w in widths.items():
            gid = int(gid)
            if not 0 <= gid < len(self.graph.groups):
                raise SpecError(f"widths name group {gid}, the graph has {len(self.graph.groups)}")
            g = self.graph.groups[gid]
            if gid not in self._col and int(w) != g.channels:
                raise SpecError(f"group {gid} is fixed and cannot be slimmed to {w} channels")
            if not 1 <= int(w) <= g.channels:
                raise SpecError(f"group {gid} has {g.channels} channels, cannot keep {w}")
        return self.graph.width_vector({int(k): v for k, v in widths.items()})

    def flops(self, widths: Mapping[int, int]) -> float:
        """FLOPs at the given widths (group id -> channels; absent groups at full width).

        Example:
            >>> fm.flops({})  == fm.full                        # doctest: +SKIP
            True
        """
        return float(self.evaluate(self.vector(widths)[None])[0])

    def min_flops(self, min_widths: Optional[Mapping[int, int]] = None) -> float:
        """FLOPs with every searchable group at its minimum width.

        Args:
            min_widths: group id -> smallest allowed width; absent groups default to their
                smallest legal width (one channel per block). Costs only grow with widths, so
                this is the lower bound of any search.

        Example:
            >>> fm.min_flops() < fm.full                         # doctest: +SKIP
            True
        """
        mins = {g.id: g.blocks for g in self.graph.searchable}
        mins.update({int(k): int(v) for k, v in (min_widths or {}).items()})
        return self.flops(mins)

    def marginal(self, widths: Optional[Mapping[int, int]] = None) -> np.ndarray:
        """FLOPs saved by removing one channel of each searchable group (DESIGN: ``ε_g``).

        Example:
            >>> eps = fm.marginal()      # [S], in searchable order   # doctest: +SKIP
        """
        w = self.vector(widths or {})
        W = np.vstack([w, w - np.eye(len(w))])
        f = self.evaluate(W)
        return f[0] - f[1:]

    def by_module(self, widths: Optional[Mapping[int, int]] = None) -> Dict[str, float]:
        """FLOPs per module (the module that ran each op; ``""`` for the root) at ``widths``.

        Example:
            >>> fm.by_module({})["layer1.0.conv1"]               # doctest: +SKIP
            102760448.0
        """
        w = self.vector(widths or {})
        out: Dict[str, float] = {}
        for module, (coef, forms) in self._op_costs:
            out[module] = out.get(module, 0.0) + coef * math.prod(self._value(f, w) for f in forms)
        return out


# -------------------------------------------------------------------- helpers

def _notrace_names() -> frozenset:
    """Names of the functions timm asks fx to keep as single calls (those imported so far)."""
    try:
        from timm.models._features_fx import get_notrace_functions
    except ImportError:
        return frozenset()
    return frozenset(getattr(f, "__name__", "") for f in get_notrace_functions())
