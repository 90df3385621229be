"""The op-handler registry: one :class:`OpHandler` per module type or function family.

A handler holds everything cafeslim knows about one op: how it moves, joins, couples or fixes
channel groups during graph analysis (:meth:`OpHandler.trace`), its FLOPs as fvcore counts
them (:meth:`OpHandler.cost`, a ``coef * product of linear forms`` of the group widths), the
module attributes a slimmed module needs (:meth:`OpHandler.slim_attrs`) and the per-channel
count that slim's sanity check compares tensors against (:meth:`OpHandler.channel_count`).

Modules are looked up along their class's MRO, so subclasses (timm's ``BatchNormAct2d``, a
user's ``MyConv(nn.Conv2d)``) find the handler of their base class; functions and methods by
name (``F.conv2d`` -> ``"conv2d"``, ``x.view`` -> ``"view"``).
"""

from __future__ import annotations

import enum
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError

Form = Tuple[Tuple[Tuple[int, float], ...], float]
"""A linear form ``sum_i a_i * w_i + c`` as ``(((i, a_i), ...), c)`` (i: searchable index)."""
Cost = Tuple[float, List[Form]]
"""``coef * prod(forms)``."""
FormFn = Callable[[Any, int], Form]
"""``form(tensor_desc, dim)``: the size of a traced tensor along ``dim`` as a linear form."""
ShapeFn = Callable[[str], Optional[Tuple[int, ...]]]
"""``shape(tensor_name)``: the (sliced) shape of one of a module's own tensors, or None."""


class OpKind(enum.StrEnum):
    """What an op record is, for FLOPs accounting (values are the strings of earlier versions)."""

    CONV = "conv"
    LINEAR = "linear"
    MATMUL = "matmul"
    EINSUM = "einsum"
    BATCH_NORM = "batch_norm"
    LAYER_NORM = "layer_norm"
    GROUP_NORM = "group_norm"
    INSTANCE_NORM = "instance_norm"
    UPSAMPLE = "upsample"
    ADAPTIVE_AVG_POOL = "adaptive_avg_pool"
    OPAQUE = "opaque"
    OTHER = "other"  # any other op; its function name is kept in OpRecord.name


def split_kind(kind: str, name: str = "") -> Tuple[str, str]:
    """``(kind, name)`` of a record, reading the ``"other:NAME"`` kinds of earlier versions.

    Example:
        >>> split_kind("other:grid_sample")
        ('other', 'grid_sample')
    """
    kind = str(kind)
    if kind.startswith("other:"):
        return OpKind.OTHER.value, kind[6:]
    return kind, name


class OpHandler:
    """Everything cafeslim knows about one op family; subclass it and :func:`register_op` it.

    Class attributes:
        modules: module types handled (subclasses included).
        functions: function / method names handled (``"conv2d"``, ``"view"``, ``"add"``).
        kinds: the :class:`OpKind` values whose FLOPs :meth:`cost` computes; ``"other:NAME"``
            for records of kind ``OTHER`` made by the function ``NAME``.
        tensor_only: False for rules that also run on non-tensor results (``getitem``, ``size``).
        uses_sizes: False for ops that read sizes rather than use them (``x.size(1)``).

    Example:
        >>> from cafeslim.graph.rules import passthrough
        >>> class Swish(OpHandler):                 # a leaf activation: channels pass through
        ...     modules = (MySwish,)
        ...     def leaf(self, module): return True
        ...     def trace(self, ctx, node, module=None): return passthrough(ctx, node)
        >>> register_op(Swish())                    # doctest: +SKIP
    """

    modules: Tuple[type, ...] = ()
    functions: Tuple[str, ...] = ()
    kinds: Tuple[str, ...] = ()
    tensor_only: bool = True
    uses_sizes: bool = True

    @property
    def name(self) -> str:
        return type(self).__name__

    def claims(self, module: nn.Module) -> bool:
        """Structural match for modules whose type is not registered (default: none)."""
        return False

    def leaf(self, module: nn.Module) -> bool:
        """Keep ``module`` as one call when tracing instead of tracing into its forward."""
        return False

    def trace(self, ctx: Any, node: fx.Node, module: Optional[nn.Module] = None) -> Any:
        """The node's value during graph analysis (``None``: no rule, the op becomes opaque)."""
        return None

    def cost(self, op: Any, form: FormFn, modules: Mapping[str, nn.Module]) -> Optional[Cost]:
        """fvcore's FLOPs of one op record as ``(coef, [forms])``; None when fvcore counts nothing.

        ``modules`` maps qualnames to the analysed model's modules (empty without a model).
        """
        return None

    def constant_cost(self, op: Any) -> bool:
        """True when the record cannot be costed from its tensors (taken from fvcore instead)."""
        return False

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        """Attributes of ``module`` that follow its tensors' sliced shapes."""
        return {}

    def channel_count(self, module: nn.Module) -> Optional[int]:
        """Entries on axis 0 that the module's channel-wise tensors must have (None: no check)."""
        return None

    def describe(self, module: nn.Module) -> Optional[Dict[str, Any]]:
        """The module's channels for ``widths.json`` (None: not listed there)."""
        count = self.channel_count(module)
        return None if count is None else {"channels": count}

    def shape_args(self, ctx: Any, node: fx.Node) -> Optional[Sequence[Any]]:
        """The target shape this op takes as arguments, when a channel count there may follow
        the input's width (``x.view(B, C, -1)`` with ``C`` read off ``x``)."""
        return None

    def example(self) -> Optional[Tuple[nn.Module, torch.Tensor]]:
        """A tiny model exercising this handler, for ``tests/ops/test_handlers.py``."""
        return None


class _Registry:
    def __init__(self) -> None:
        self.by_type: Dict[type, OpHandler] = {}
        self.by_function: Dict[str, OpHandler] = {}
        self.by_kind: Dict[str, OpHandler] = {}
        self.handlers: List[OpHandler] = []
        self._type_cache: Dict[type, Optional[OpHandler]] = {}


_REG = _Registry()
_BUILTINS = ("conv", "linear", "norm", "elementwise", "shape", "mixing")
_loaded = False


def _load_builtins() -> None:
    # Handler modules use graph/ rules, which use OpKind from here: loading them on first
    # lookup (not at import) keeps the two packages free of an import cycle.
    global _loaded
    if not _loaded:
        _loaded = True
        import importlib
        for mod in _BUILTINS:
            importlib.import_module(f"{__package__}.{mod}")


def add_handler(handler: OpHandler, *, override: bool = False) -> OpHandler:
    """Register ``handler`` for its module types, function names and kinds.

    Raises:
        ConfigError: a type, name or kind already has a handler (unless ``override``).

    Example:
        >>> h = add_handler(MyHandler())            # doctest: +SKIP
    """
    _load_builtins()
    if not isinstance(handler, OpHandler):
        raise ConfigError(f"register an OpHandler instance, not {type(handler).__name__}")
    tables = ((_REG.by_type, handler.modules), (_REG.by_function, handler.functions),
              (_REG.by_kind, tuple(str(k) for k in handler.kinds)))
    if not override:
        for table, keys in tables:
            taken = [k for k in keys if k in table]
            if taken:
                what = getattr(taken[0], "__name__", taken[0])
                raise ConfigError(f"{what} already has the op handler {table[taken[0]].name}; "
                                  "pass override=True to replace it")
    for table, keys in tables:
        for k in keys:
            table[k] = handler
    _REG.handlers.append(handler)
    _REG._type_cache.clear()
    return handler


def remove_handler(handler: OpHandler) -> None:
    """Undo :func:`add_handler` (handlers it had replaced do not come back).

    Example:
        >>> remove_handler(h)                       # doctest: +SKIP
    """
    for table in (_REG.by_type, _REG.by_function, _REG.by_kind):
        for k in [k for k, h in table.items() if h is handler]:
            del table[k]
    if handler in _REG.handlers:
        _REG.handlers.remove(handler)
    _REG._type_cache.clear()


@contextmanager
def registry_snapshot() -> Iterator[None]:
    """Restore the whole registry on exit (for tests that register their own ops).

    Example:
        >>> with registry_snapshot():
        ...     register_op(MyLayer, like="passthrough")
    """
    _load_builtins()
    saved = (dict(_REG.by_type), dict(_REG.by_function), dict(_REG.by_kind), list(_REG.handlers))
    try:
        yield
    finally:
        _REG.by_type, _REG.by_function, _REG.by_kind, _REG.handlers = (
            saved[0], saved[1], saved[2], saved[3])
        _REG._type_cache.clear()


def handlers() -> List[OpHandler]:
    """Every registered handler, in registration order.

    Example:
        >>> "ConvHandler" in [h.name for h in handlers()]
        True
    """
    _load_builtins()
    return list(_REG.handlers)


def module_handler(module: nn.Module) -> Optional[OpHandler]:
    """The handler of ``module``'s type or nearest registered base class, else a claiming one.

    Example:
        >>> module_handler(nn.BatchNorm2d(4)).name
        'BatchNormHandler'
    """
    _load_builtins()
    cls = type(module)
    if cls in _REG._type_cache:
        h = _REG._type_cache[cls]
    else:
        h = next((_REG.by_type[c] for c in cls.__mro__ if c in _REG.by_type), None)
        _REG._type_cache[cls] = h
    if h is not None:
        return h
    # Structural claims look at the instance (its buffers), so they are not cached per type.
    return next((c for c in _REG.handlers if c.claims(module)), None)


def function_handler(name: str) -> Optional[OpHandler]:
    """The handler of a function or method name (``"conv2d"``, ``"view"``), if any.

    Example:
        >>> function_handler("view").name
        'ReshapeHandler'
    """
    _load_builtins()
    return _REG.by_function.get(name)


def kind_handler(kind: str) -> Optional[OpHandler]:
    """The handler that costs records of ``kind`` (an :class:`OpKind` value).

    Example:
        >>> kind_handler(OpKind.CONV).name
        'ConvHandler'
    """
    _load_builtins()
    return _REG.by_kind.get(str(kind))


def _record_handler(op: Any) -> Optional[OpHandler]:
    h = _REG.by_kind.get(op.kind)
    if h is None:
        kind, name = split_kind(op.kind, getattr(op, "name", ""))
        if kind == OpKind.OTHER:
            h = _REG.by_kind.get(f"other:{name}")
    return h


def op_cost(op: Any, form: FormFn, modules: Optional[Mapping[str, nn.Module]] = None) -> Optional[Cost]:
    """fvcore's cost of one op record, from the handler of its kind (``other:NAME`` for others).

    Example:
        >>> op_cost(graph.ops[0], fm._form)          # doctest: +SKIP
        (118013952.0, [((), 3.0), (((0, 1.0),), 0.0)])
    """
    if not _loaded:
        _load_builtins()
    h = _record_handler(op)
    return h.cost(op, form, modules or {}) if h is not None else None


def is_constant_cost(op: Any, notrace: frozenset = frozenset()) -> bool:
    """Records costed as constants from fvcore: opaque ones, calls to functions tracing keeps
    whole (timm's no-trace functions, whose insides fvcore counts but the graph cannot see), and
    records whose handler says their tensors do not suffice (an einsum with listed operands)."""
    if not _loaded:
        _load_builtins()
    h = _REG.by_kind.get(op.kind)
    if h is not None:               # the common case: a costed kind, no name to look at
        return h.constant_cost(op)
    kind, name = split_kind(op.kind, getattr(op, "name", ""))
    return kind == OpKind.OPAQUE or (kind == OpKind.OTHER and name in notrace)


def is_leaf(module: nn.Module) -> bool:
    """True when tracing keeps ``module`` as one call (its handler's :meth:`OpHandler.leaf`).

    Example:
        >>> is_leaf(nn.BatchNorm2d(4)), is_leaf(nn.ReLU())
        (True, False)
    """
    h = module_handler(module)
    return h is not None and h.leaf(module)
