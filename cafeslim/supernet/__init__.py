"""The locally free supernet (Eq. 5) and its min-min training step (Eq. 11-12).

``Supernet(model, graph, space)`` runs any IndexSpec of the wrapped model by gathering the
active channels of every member tensor (compute shrinks with width); ``recalibrate_bn``
measures a sub-network's BatchNorm statistics; ``minmin_step`` is one training step. The
training loop (data, schedule, checkpoints) builds on these.
"""

from .bn import recalibrate_bn, recalibrate_bn_many
from .minmin import MinMinConfig, StepStats, minmin_step, step_candidates
from .supernet import Supernet, bn_modules, spec_key, unwrap

__all__ = [
    "MinMinConfig",
    "StepStats",
    "Supernet",
    "bn_modules",
    "minmin_step",
    "recalibrate_bn",
    "recalibrate_bn_many",
    "spec_key",
    "step_candidates",
    "unwrap",
]
