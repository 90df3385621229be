"""Weights under which a model's output depends on every channel, for ``cafeslim check``.

A randomly initialised model can make a check vacuous: torchvision's ViTs zero-initialise
their head (the output is identically 0), GoogLeNet's truncated-normal 0.01 init lets the
signal vanish so that the output does not depend on the input, LayerScale at 1e-6 turns
residual branches off, and a norm with weight 1 and bias 0 cannot reveal a mis-gathered
affine parameter. :func:`sensitize` returns a copy with such parameters re-drawn (seeded)
and the BatchNorm statistics recalibrated on random inputs, so that every property
``check`` measures has something to measure. The user's model is never modified.
"""

from __future__ import annotations

import copy
import math
from typing import List, Optional

import torch
from torch import nn

# A conv/linear weight whose standard deviation times sqrt(fan-in) is below this shrinks the
# signal by more than half per layer; twenty such layers and nothing is left (GoogLeNet).
VANISHING_GAIN = 0.5
BIAS_STD = 0.1
CALIBRATION_BATCHES = 2
SHIFT_NAMES = ("bias", "beta", "shift", "token", "embed", "pos")
"""Parameter names that add to a signal rather than scale it."""


def _is_constant(t: torch.Tensor) -> bool:
    if t.numel() == 1:
        return float(t) == 0.0  # a zero scalar gate switches a whole branch off
    return bool((t.max() - t.min()) == 0)


def _fan_in(mod: nn.Module, t: torch.Tensor) -> int:
    if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed:
        return max(1, t.shape[0] // mod.groups * math.prod(t.shape[2:]))
    return max(1, math.prod(t.shape[1:]))


def _redraw(mod: nn.Module, name: str, t: torch.Tensor, gen: torch.Generator) -> bool:
    """Re-draw one parameter in place when it is constant or vanishing; True when changed."""
    if not t.is_floating_point() or t.numel() == 0:
        return False
    is_matrix = name == "weight" and t.dim() >= 2 and isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear))
    if is_matrix:
        std = 1.0 / math.sqrt(_fan_in(mod, t))
        if _is_constant(t) or float(t.float().std()) < VANISHING_GAIN * std:
            t.copy_(torch.randn(t.shape, generator=gen) * std)
            return True
        return False
    if not _is_constant(t):
        return False
    leaf = name.rsplit(".", 1)[-1].lower()
    if any(k in leaf for k in SHIFT_NAMES):
        # biases, shifts, class tokens, position embeddings: small and centred
        t.copy_(torch.randn(t.shape, generator=gen) * BIAS_STD)
    else:
        # norm weights, gains, LayerScale gammas, gates: around one, all different (a gain
        # near zero would let a norm-free network's signal vanish)
        t.copy_(0.5 + torch.rand(t.shape, generator=gen))
    return True


def _recalibrate(model: nn.Module, example_input: torch.Tensor, gen: torch.Generator) -> int:
    """Re-estimate every BatchNorm's running statistics on random inputs (root stays in eval)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats and m.running_mean is not None]
    if not bns:
        return 0
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    batch = max(2, example_input.shape[0])
    try:
        with torch.no_grad():
            for _ in range(CALIBRATION_BATCHES):
                shape = (batch, *example_input.shape[1:])
                model(torch.randn(shape, generator=gen, dtype=example_input.dtype))
    finally:
        for m in bns:
            m.eval()
    return len(bns)


def sensitize(model: nn.Module, example_input: torch.Tensor, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose output depends on its input and on every channel.

    Constant or zero parameters (zero-initialised heads, LayerScale, norm weights and biases,
    zero gates) are re-drawn, conv/linear weights too small to pass a signal are re-drawn at
    ``1/sqrt(fan_in)`` scale, and BatchNorm statistics are recalibrated on random inputs
    (so running means and variances fit the new weights). Deterministic for a seed.

    Args:
        model: the model; it is deep-copied, never modified.
        example_input: an input batch (for its shape and dtype).
        seed: seed of every random draw.

    Returns:
        The re-drawn copy, in eval mode; its attribute ``cafeslim_redrawn`` lists the
        parameters that were changed.

    Example:
        >>> probe = sensitize(torchvision.models.googlenet(init_weights=True), torch.randn(1, 3, 224, 224))
    """
    probe = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    redrawn: List[str] = []
    with torch.no_grad():
        for mod_name, mod in probe.named_modules():
            for name, p in mod.named_parameters(recurse=False):
                if _redraw(mod, name, p.data, gen):
                    redrawn.append(f"{mod_name}.{name}" if mod_name else name)
    _recalibrate(probe, example_input, gen)
    probe.cafeslim_redrawn = redrawn
    return probe


def redrawn_parameters(model: nn.Module) -> Optional[List[str]]:
    """The parameters :func:`sensitize` changed on ``model`` (None for a model it did not make)."""
    return getattr(model, "cafeslim_redrawn", None)
