"""The op-handler registry: what cafeslim knows about each op, in one place per op family.

``register_op`` describes a user's own layer (see README.md, "Custom layers"); the built-in
handlers live in ``conv.py``, ``linear.py``, ``norm.py``, ``elementwise.py``, ``shape.py`` and
``mixing.py`` and are loaded on first lookup.
"""

from .custom import register_op, registered_op, unregister_op
from .registry import (OpHandler, OpKind, function_handler, handlers, is_leaf, kind_handler, module_handler,
                       op_cost, registry_snapshot, split_kind)


def is_bn_like(module) -> bool:
    """BatchNorm and registered look-alikes (see :func:`cafeslim.ops.norm.is_bn_like`)."""
    from .norm import is_bn_like as _is
    return _is(module)


def is_std_conv(module) -> bool:
    """Weight-standardised convs (see :func:`cafeslim.ops.conv.is_std_conv`)."""
    from .conv import is_std_conv as _is
    return _is(module)


__all__ = ["OpHandler", "OpKind", "register_op", "registered_op", "unregister_op", "registry_snapshot",
           "module_handler", "function_handler", "kind_handler", "handlers", "op_cost", "is_leaf",
           "split_kind", "is_bn_like", "is_std_conv"]
