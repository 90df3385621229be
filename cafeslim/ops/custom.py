"""``register_op``: describe a user's own layer to cafeslim in one call.

The common cases need no handler class: a module that behaves like a conv or a linear layer
on its own ``weight``, a channel-wise pass-through module, or one with per-channel parameters
that join its input's channel group. Registered modules are kept as single calls when tracing,
so a module fx cannot trace (Python control flow on a traced value) works too. The general case
is a subclass of :class:`~cafeslim.ops.registry.OpHandler`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Type, Union

import torch.fx as fx
from torch import nn

from ..errors import ConfigError
from .registry import OpHandler, OpKind, ShapeFn, add_handler, module_handler, registry_snapshot, remove_handler

_LIKE = ("conv", "linear", "passthrough", "batch_norm")


class _CustomModule(OpHandler):
    """A registered user module: a built-in rule ``like`` and/or per-channel ``params``."""

    def __init__(self, types: Tuple[type, ...], like: Optional[str], params: Sequence[str], axis: int,
                 channels_attr: Optional[str]):
        self.modules = types
        self.like, self.params, self.axis, self.channels_attr = like, tuple(params), axis, channels_attr
        self._base = self._builtin(like) if like not in (None, "passthrough") else None

    @staticmethod
    def _builtin(like: str) -> OpHandler:
        probe = {"conv": nn.Conv2d(1, 1, 1), "linear": nn.Linear(1, 1), "batch_norm": nn.BatchNorm2d(1)}[like]
        return module_handler(probe)

    @property
    def name(self) -> str:
        return f"custom({', '.join(t.__name__ for t in self.modules)})"

    def leaf(self, module: nn.Module) -> bool:
        return True

    def trace(self, ctx, node: fx.Node, module: Optional[nn.Module] = None):
        from ..graph.rules import passthrough

        if self.like in ("conv", "linear"):
            return _weight_layer(ctx, node, module, self.like)
        if self._base is not None:
            return self._base.trace(ctx, node, module)
        if self.params:
            return _per_channel(ctx, node, module, self.params, self.axis)
        return passthrough(ctx, node)

    def slim_attrs(self, module: nn.Module, shape: ShapeFn) -> Dict[str, Any]:
        if self.like in ("conv", "linear"):
            w = shape("weight")
            names = ("out_channels", "in_channels") if self.like == "conv" else ("out_features", "in_features")
            if self.like == "conv" and getattr(module, "groups", 1) != 1:
                return self._base.slim_attrs(module, shape)
            return {n: w[i] for i, n in enumerate(names) if isinstance(getattr(module, n, None), int)}
        if self._base is not None:
            return self._base.slim_attrs(module, shape)
        if self.channels_attr and self.params:
            t = getattr(module, self.params[0])
            s = shape(self.params[0])
            return {self.channels_attr: s[_channel_dim(t)]} if s else {}
        return {}

    def channel_count(self, module: nn.Module) -> Optional[int]:
        if self.like in ("conv", "linear"):
            return int(module.weight.shape[0])
        if self._base is not None:
            return self._base.channel_count(module)
        if self.channels_attr:
            return getattr(module, self.channels_attr)
        return None


def _weight_layer(ctx, node: fx.Node, module: nn.Module, like: str):
    """A conv or linear layer on ``module.weight`` (and ``module.bias``), attributes optional."""
    from ..graph import layers

    x = ctx.value(node.args[0]) if node.args else None
    shape, has_bias = tuple(module.weight.shape), getattr(module, "bias", None) is not None
    if like == "linear":
        return layers.linear(ctx, node, x, str(node.target), shape, has_bias)
    return layers.conv(ctx, node, x, str(node.target), shape, getattr(module, "groups", 1), has_bias)


def _channel_dim(t) -> int:
    dims = [i for i, s in enumerate(t.shape) if s != 1]
    if len(dims) != 1:
        raise ConfigError(f"a per-channel parameter must have one axis longer than 1, not shape {tuple(t.shape)}")
    return dims[0]


def _per_channel(ctx, node: fx.Node, module: nn.Module, params: Sequence[str], axis: int):
    """The output keeps the input's layout; each parameter's long axis joins its channels."""
    from ..graph.rules import passthrough
    from ..graph.state import Desc

    x = ctx.value(node.args[0]) if node.args else None
    ctx.kind, ctx.op_name = OpKind.OTHER, type(module).__name__
    if isinstance(x, Desc):
        if x.axis != axis % len(x.shape) or x.inner != 1:
            ctx.state.fix(x.segs, f"'{node.target}' scales an axis that is not the tracked channel axis")
        else:
            for p in params:
                t = getattr(module, p)
                if t.shape[_channel_dim(t)] != x.channels:
                    ctx.state.fix(x.segs, f"'{node.target}.{p}' does not have one entry per channel")
                else:
                    ctx.state.add_member(x, str(node.target), p, _channel_dim(t), "param")
    return passthrough(ctx, node)


Target = Union[type, OpHandler, Type[OpHandler], Sequence[type]]


def register_op(target: Optional[Target] = None, handler: Optional[OpHandler] = None, *,
                like: Optional[str] = None, params: Sequence[str] = (), axis: int = 1,
                channels_attr: Optional[str] = None, override: bool = False) -> Any:
    """Tell cafeslim how a module type (or a handler) treats channels.

    Args:
        target: a module class (or several), an :class:`OpHandler` instance or subclass. Omit it
            to use ``register_op(...)`` as a class decorator.
        handler: a full handler for the module class ``target``.
        like: ``"conv"`` / ``"linear"`` (the module has a conv's or linear's ``weight``, ``bias``
            and channel attributes), ``"batch_norm"``, or ``"passthrough"`` (channel-wise: the
            output keeps the input's channels).
        params: per-channel parameters or buffers (one axis of ``channels`` entries, any number
            of size-1 axes) that join the input's channel group; the output keeps the input's
            channels.
        axis: the input's channel axis for ``params`` (1 for ``N, C, H, W``; -1 for tokens).
        channels_attr: an int attribute holding the channel count, rewritten when slimming.
        override: replace a handler registered for the same type or name.

    Returns:
        The registered handler (the class itself when decorating a class), for :func:`unregister_op`.

    Raises:
        ConfigError: nothing to register, an unknown ``like``, or a type already registered.

    Example:
        >>> register_op(ChannelScale, params=["scale"])                 # doctest: +SKIP
        >>> register_op(MyConv, like="conv")                            # doctest: +SKIP
        >>> @register_op(like="passthrough")                            # doctest: +SKIP
        ... class MyAct(nn.Module): ...
    """
    if target is None:
        def decorate(cls: type) -> type:
            register_op(cls, handler, like=like, params=params, axis=axis, channels_attr=channels_attr,
                        override=override)
            return cls
        return decorate
    if isinstance(target, type) and issubclass(target, OpHandler):
        add_handler(target(), override=override)
        return target
    if isinstance(target, OpHandler):
        return add_handler(target, override=override)
    types = tuple(target) if isinstance(target, (list, tuple)) else (target,)
    if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise ConfigError(f"register_op takes nn.Module classes or an OpHandler, not {target!r}")
    if handler is not None:
        handler.modules = types
        return add_handler(handler, override=override)
    if like is not None and like not in _LIKE:
        raise ConfigError(f"register_op(like={like!r}): choose one of {', '.join(_LIKE)}")
    if like is None and not params:
        raise ConfigError("register_op needs like=..., params=[...] or a handler")
    if like is not None and params:
        raise ConfigError("register_op takes either like=... or params=[...], not both")
    return add_handler(_CustomModule(types, like, params, axis, channels_attr), override=override)


def unregister_op(target: Union[OpHandler, type]) -> None:
    """Remove a handler returned by :func:`register_op` (or the handler of a module class).

    Example:
        >>> h = register_op(ChannelScale, params=["scale"])             # doctest: +SKIP
        >>> unregister_op(h)                                            # doctest: +SKIP
    """
    if isinstance(target, type) and issubclass(target, nn.Module):
        from .registry import _REG

        found = _REG.by_type.get(target)
        if found is None:
            raise ConfigError(f"{target.__name__} has no registered op handler")
        target = found
    remove_handler(target)


@contextmanager
def registered_op(target: Target, handler: Optional[OpHandler] = None, **kw: Any) -> Iterator[Any]:
    """:func:`register_op` for the duration of a ``with`` block (tests, experiments).

    Example:
        >>> with registered_op(ChannelScale, params=["scale"]):        # doctest: +SKIP
        ...     graph = analyze(model, x)
    """
    with registry_snapshot():
        yield register_op(target, handler, **kw)
