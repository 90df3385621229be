"""``--init scratch``: the model family's own initialisation at the searched widths.

The paper retrains every searched width from scratch. ``reset_parameters()`` is not the
family's initialisation (torchvision's ResNet draws its convolutions with Kaiming-normal in
fan-out mode, timm's EfficientNets with their own fan-out rule, ViTs with a truncated normal
of fixed std), so :func:`scratch_model` builds a *fresh* model of the original class with the
original constructor, slims it to the widths and corrects the scales that depend on a width.

Whether a weight's initial std follows its fan-in, its fan-out, its fan-out per group or no fan
at all is detected from the fresh full model itself (:func:`fan_rules`): for each module type,
the rule under which ``std · sqrt(fan)`` is the same constant over all its layers is the one
the family used (a ResNet's convolutions all give sqrt(2) under fan-out). Where the layers of a
type cannot tell the rules apart (one layer, or equal fans), the rule whose constant is closest
to a usual gain (1, sqrt(2), 1/sqrt(3)) wins. A slimmed weight is then multiplied by
``sqrt(fan_full / fan_slim)`` under its rule.

Example:
    >>> fresh = torchvision.models.resnet50()                            # doctest: +SKIP
    >>> small = scratch_model(fresh, graph, spec)                        # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

RULES = ("fan_in", "fan_out", "fan_out_group", "const")  # tie-break order
_GAINS = (1.0, math.sqrt(2.0), 1.0 / math.sqrt(3.0))
_MIN_NUMEL = 64  # smaller weights give too noisy a std to vote
_DISTINCT = 0.05  # log-spread difference that counts as evidence


def fans(module: nn.Module, shape: Sequence[int]) -> Dict[str, float]:
    """Every rule's fan of a weight of ``shape`` in ``module`` (its ``groups`` matter).

    Example:
        >>> fans(nn.Conv2d(8, 8, 3, groups=8), (8, 1, 3, 3))
        {'fan_in': 9.0, 'fan_out_group': 9.0, 'fan_out': 72.0, 'const': 1.0}
    """
    rf = float(math.prod(shape[2:])) if len(shape) > 2 else 1.0
    groups = int(getattr(module, "groups", 1) or 1)
    return {"fan_in": shape[1] * rf, "fan_out_group": shape[0] // groups * rf,
            "fan_out": shape[0] * rf, "const": 1.0}


def _weights(model: nn.Module) -> List[Tuple[str, nn.Module, torch.Tensor]]:
    out = []
    for mname, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim >= 2 and isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
            out.append((f"{mname}.weight" if mname else "weight", mod, w))
    return out


def _gain_rule(logs: Mapping[str, List[float]]) -> str:
    """The rule whose ``std·sqrt(fan)`` is closest to a usual gain (one layer's evidence)."""
    def distance(rule: str) -> float:
        mean = sum(logs[rule]) / len(logs[rule])
        return min(abs(mean - math.log(g)) for g in _GAINS)
    return min(RULES, key=lambda r: (round(distance(r), 2), RULES.index(r)))


def fan_rules(model: nn.Module) -> Dict[str, str]:
    """Per conv/linear weight of a freshly initialised model: the fan its std follows.

    Example:
        >>> rules = fan_rules(torchvision.models.resnet18())                 # doctest: +SKIP
        >>> rules["conv1.weight"], rules["fc.weight"]                        # doctest: +SKIP
        ('fan_out', 'fan_in')
    """
    by_type: Dict[str, List[Tuple[str, Dict[str, float]]]] = defaultdict(list)
    rules: Dict[str, str] = {}
    for name, mod, w in _weights(model):
        std = float(w.detach().float().std()) if w.numel() > 1 else 0.0
        if w.numel() < _MIN_NUMEL or not std > 0:
            rules[name] = "fan_in"  # too small to tell (or constant): PyTorch's default
            continue
        logs = {r: math.log(std) + 0.5 * math.log(f) for r, f in fans(mod, w.shape).items()}
        by_type[type(mod).__name__].append((name, logs))
    for layers in by_type.values():
        per_rule = {r: [logs[r] for _, logs in layers] for r in RULES}
        spread = {r: _std(v) for r, v in per_rule.items()}
        best = min(RULES, key=lambda r: (spread[r], RULES.index(r)))
        others = [spread[r] for r in RULES if r != best]
        if len(layers) < 2 or min(others) - spread[best] < _DISTINCT:
            best = _gain_rule(per_rule)  # the layers do not tell the rules apart
        for name, _ in layers:
            rules[name] = best
    return rules


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@torch.no_grad()
def rescale_to_widths(full: nn.Module, small: nn.Module) -> Dict[str, float]:
    """Multiply each slimmed weight of ``small`` by ``sqrt(fan_full / fan_slim)`` of its rule.

    Returns:
        The factor applied per weight name (only those that changed shape).

    Example:
        >>> factors = rescale_to_widths(fresh_full, slim(fresh_full, graph, spec))  # doctest: +SKIP
    """
    rules = fan_rules(full)
    full_w = {name: (mod, w) for name, mod, w in _weights(full)}
    factors: Dict[str, float] = {}
    for name, mod, w in _weights(small):
        if name not in full_w or tuple(full_w[name][1].shape) == tuple(w.shape):
            continue
        rule = rules.get(name, "fan_in")
        before = fans(full_w[name][0], full_w[name][1].shape)[rule]
        after = fans(mod, w.shape)[rule]
        if after > 0 and before != after:
            factors[name] = math.sqrt(before / after)
            w.mul_(factors[name])
    return factors


def scratch_model(fresh: nn.Module, graph: object, spec: Mapping[int, Sequence[int]]) -> nn.Module:
    """Slim a freshly initialised full model to ``spec`` and correct its fan-dependent scales.

    Args:
        fresh: a new model of the original class, built with the original constructor (so
            with the family's own initialisation), e.g. from :func:`cafeslim.models.create`.
        graph: its :class:`~cafeslim.graph.ChannelGraph` (that of the original model).
        spec: the IndexSpec to keep.

    Example:
        >>> small = scratch_model(create("tv:resnet50").model, graph, spec)   # doctest: +SKIP
    """
    from ..export.slim import slim

    small = slim(fresh, graph, spec)
    rescale_to_widths(fresh, small)
    return small


__all__ = ["RULES", "fan_rules", "fans", "rescale_to_widths", "scratch_model"]
