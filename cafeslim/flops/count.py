"""Ground-truth FLOPs and parameter counts of a real module, with fvcore.

fvcore traces the model with ``torch.jit.trace`` and counts a fixed set of aten ops
(convolution, linear/matmul/bmm/addmm/einsum, norms, bilinear/nearest 2-D upsampling,
``adaptive_avg_pool2d``, ``grid_sampler``); everything else (element-wise ops, pooling other
than adaptive average 2-D, ``scaled_dot_product_attention``, ``baddbmm``, ...) costs nothing.
One multiply-add is one FLOP, so torchvision's ResNet-50 at 224x224 is about 4.1 G.

One deliberate addition to fvcore: convolutions with string padding (``padding="same"``), which
trace to ``aten::_convolution_mode``, are counted like any other convolution instead of as zero.

This is what the analytic :class:`cafeslim.flops.FlopsModel` must reproduce.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Dict, Iterator, Tuple, Union

import torch
from torch import nn

Inputs = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the duration, then restore every submodule's own mode.

    ``model.train(flag)`` would overwrite submodules that the user had put in a different mode
    on purpose, so the flags are saved one by one.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _conv_mode_flop_jit(inputs, outputs):
    """``aten::_convolution_mode``: a conv with string padding (``padding="same"``/``"valid"``).

    fvcore has no handle for it and would count such convs as free (ConvMixer's depthwise convs,
    6 % of its FLOPs). It is an ordinary, non-transposed convolution, so it is counted exactly
    like ``aten::_convolution``: N * prod(weight shape) * prod(output spatial).
    """
    from fvcore.nn.jit_handles import conv_flop_count, get_shape

    return conv_flop_count(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0]))


def _analysis(model: nn.Module, example_input: Inputs):
    # Imported lazily: fvcore pulls in iopath/portalocker, which the rest of cafeslim never needs.
    from fvcore.nn import FlopCountAnalysis

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    fca = FlopCountAnalysis(model, inputs)
    fca.set_op_handle("aten::_convolution_mode", _conv_mode_flop_jit)
    # Unsupported ops (relu, add, sdpa, ...) are part of the convention, not a problem to report.
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # fvcore logs (not warns) about skipped ops through its own logger; the jit tracer warns.
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def count_flops(model: nn.Module, example_input: Inputs) -> int:
    """FLOPs of one forward pass as fvcore counts them (eval mode, one multiply-add = one FLOP).

    Args:
        model: any module that ``torch.jit.trace`` can run.
        example_input: a tensor, or a tuple of positional tensors.

    Returns:
        The total count, rounded to an integer (fvcore's einsum handle returns floats).

    Example:
        >>> import torchvision
        >>> count_flops(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))  # doctest: +SKIP
        4111514624
    """
    with _eval_no_grad(model), _quiet():
        return int(round(float(_analysis(model, example_input).total())))


def count_flops_by_module(model: nn.Module, example_input: Inputs) -> Dict[str, int]:
    """fvcore FLOPs of every submodule (its whole subtree, over all of its calls).

    Keys are qualified module names as in ``model.named_modules()``; ``""`` is the whole model.
    Used by :class:`~cafeslim.flops.FlopsModel` to cost modules that graph analysis treats as
    opaque.

    Example:
        >>> per = count_flops_by_module(model, torch.randn(1, 3, 224, 224))  # doctest: +SKIP
        >>> per["layer1.0.conv1"]  # doctest: +SKIP
        12845056
    """
    with _eval_no_grad(model), _quiet():
        counts = _analysis(model, example_input).by_module()
    return {name: int(round(float(v))) for name, v in counts.items()}


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once; buffers not counted).

    Example:
        >>> count_params(torch.nn.Linear(10, 5))
        55
    """
    return sum(p.numel() for p in model.parameters())
