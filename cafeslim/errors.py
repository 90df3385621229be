"""One error hierarchy for everything a user can get wrong.

The CLI turns any :class:`CafeslimError` into a single red line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CafeslimError(Exception):
    """Base class of every error caused by user input or user environment."""

    exit_code = 2


class ModelNotFoundError(CafeslimError):
    """The model name or ``module:callable`` does not resolve to a model."""


class WeightsError(CafeslimError):
    """A weights file is missing, unreadable, unsafe or does not fit the model."""


class TraceError(CafeslimError):
    """The model cannot be traced into a graph that cafeslim understands."""


class BudgetError(CafeslimError):
    """A FLOPs budget is malformed or cannot be met."""


class SpecError(CafeslimError):
    """An IndexSpec or widths file does not fit the model's channel graph."""


class TransferError(SpecError):
    """A widths file's backbone does not match the target model's (backbone width transfer)."""


class DataError(CafeslimError):
    """A dataset folder is missing, empty or malformed."""


class CheckpointError(CafeslimError):
    """A checkpoint or run directory is missing, corrupt or belongs to another run."""


class OutputExistsError(CafeslimError):
    """An output folder exists and is not empty (pass ``--force`` to overwrite)."""


class ConfigError(CafeslimError):
    """A config file or flag value is invalid."""


class ExportError(CafeslimError):
    """An exporter failed on the model, or its file does not reproduce the model's output."""
