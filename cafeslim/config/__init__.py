"""Typed settings for every stage: frozen dataclasses, YAML files and command-line flags.

* :mod:`.stages` — :class:`MinMinConfig`, :class:`TrainConfig`, :class:`SearchConfig`,
  :class:`BinsConfig`, :class:`ExportConfig`; their ``Literal`` fields are the CLI's choices.
* :mod:`.train` — :class:`RetrainConfig`, the settings of ``cafeslim train``.
* :mod:`.aug` — :class:`AugConfig`, the augmentation both share (``TrainConfig`` and
  ``RetrainConfig`` inherit its fields).
* :mod:`.run` — :class:`RunSettings` (a run's ``config.yaml``, with its ``task``), the demo
  preset, the method rules and :func:`resolve_settings` (flags > YAML > demo preset > defaults).
* :mod:`.files` — resolving a dataclass from flags and YAML, atomic writes, output folders.

Nothing here imports torch: the CLI's ``--help`` must stay fast.

Example:
    >>> resolve(TrainConfig, {"batch_size": 32}, {"epochs": 3}).epochs
    3
"""

from .aug import AugConfig, aug_of
from .files import (RESUMABLE_CHANGES, atomic_write, changed_settings, dump_yaml,
                    ensure_empty_dir, load_yaml, resolve, section, to_dict)
from .run import (BUILTIN_IMG_SIZE, CONFIG_FILE, DEMO, DEMO_HARD, DEMO_IMG_SIZE, DEMO_PRESET,
                  DEMO_HARD_TRAIN, DEMO_TRAINED_START, RUN_FORMAT, RunSettings, TaskName, default_order,
                  demo_preset, load_settings, method_offset, resolve_settings, task_name)
from .stages import MIN_STEPS, BinsConfig, ExportConfig, MinMinConfig, SearchConfig, TrainConfig, choices
from .train import RETRAIN_RESUMABLE, RetrainConfig

__all__ = [
    "AugConfig", "BUILTIN_IMG_SIZE", "BinsConfig", "CONFIG_FILE", "DEMO", "DEMO_HARD", "DEMO_IMG_SIZE", "DEMO_PRESET",
    "DEMO_HARD_TRAIN", "DEMO_TRAINED_START", "MIN_STEPS", "ExportConfig", "MinMinConfig", "RESUMABLE_CHANGES",
    "RETRAIN_RESUMABLE", "RUN_FORMAT", "RetrainConfig", "RunSettings", "SearchConfig", "TaskName",
    "TrainConfig", "atomic_write", "aug_of", "changed_settings", "choices", "default_order",
    "demo_preset", "dump_yaml", "ensure_empty_dir", "load_settings", "load_yaml", "method_offset", "resolve",
    "resolve_settings", "section", "task_name", "to_dict",
]
