"""Load a user's weights file into a model, safely and strictly.

A ``.pt`` file from a stranger is a pickle, and unpickling can run arbitrary code; so pickles
are read with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers, and anything else is refused. ``.safetensors`` files cannot carry code at all and
are preferred.

Training scripts wrap their state dicts (``{"model": ..., "optimizer": ..., "epoch": ...}``)
and DDP prefixes every key with ``module.``; both are undone here so that the common
checkpoint layouts load without conversion. Loading is strict: a file that does not fit the
model is an error that names the offending keys, never a silent partial load.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Union

import torch
from torch import nn

from ..errors import WeightsError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")
"""Keys under which checkpoints nest their state dict, in order of preference.

The raw weights come before the EMA copy, as in timm's ``load_checkpoint(use_ema=False)``.
"""

PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by wrappers: DDP/DataParallel (``module.``), ``torch.compile``."""

_SHOW = 3  # offending keys named per category in an error message

StateDict = Dict[str, torch.Tensor]


def read_state_dict(path: Union[str, Path]) -> StateDict:
    """Read a weights file into a flat ``{key: tensor}`` dict, unwrapped and unprefixed.

    Args:
        path: a ``.safetensors`` file or a ``.pt``/``.pth``/``.bin``/``.ckpt`` pickle, holding a
            state dict directly or under one of :data:`WRAPPER_KEYS`.

    Returns:
        The state dict, with a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix
        removed when every key carries it.

    Raises:
        WeightsError: missing, unreadable or corrupt file; unknown suffix; a pickle that needs
            to run code (refused for safety); no state dict inside.

    Example:
        >>> sd = read_state_dict("runs/r18/export/weights.safetensors")
        >>> sorted(sd)[:2]
        ['bn1.bias', 'bn1.running_mean']
    """
    return _strip_prefixes(_read_unwrapped(Path(path)))


def load_weights(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a weights file into ``model`` strictly (see :func:`read_state_dict` for formats).

    Args:
        model: the module to fill; modified in place.
        path: the weights file.

    Returns:
        ``model``, for chaining.

    Raises:
        WeightsError: the file cannot be read (see :func:`read_state_dict`), or its keys or
            shapes do not match the model; the message names the first few offenders.

    Example:
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> load_weights(model, "finetuned.safetensors")  # doctest: +SKIP
    """
    expected = model.state_dict()
    state = _strip_prefixes(_read_unwrapped(Path(path)), keep_if_in=expected)
    problems = _mismatches(state, expected)
    if problems:
        raise WeightsError(f"weights file {path} does not fit {type(model).__name__}: {problems}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype or other checks that _mismatches does not cover
        first = str(exc).strip().splitlines()
        raise WeightsError(f"weights file {path} does not fit {type(model).__name__}: "
                           f"{' '.join(line.strip() for line in first[:4])}") from None
    return model


def _read_unwrapped(path: Path) -> StateDict:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist" if not path.exists()
                           else f"weights path {path} is not a file")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        loaded: object = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        loaded = _read_pickle(path)
    else:
        raise WeightsError(
            f"weights file {path} has an unknown suffix {path.suffix!r}; "
            f"use {SAFETENSORS_SUFFIX} or one of {', '.join(PICKLE_SUFFIXES)}")
    return _unwrap(loaded, path)


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"cannot read weights file {path} (corrupt or not safetensors): "
                           f"{_one_line(exc)}") from None


def _read_pickle(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # Disallowed globals/classes mean the pickle wants to run code; anything else the
        # restricted unpickler trips over (unknown opcode, bad persistent id) is corruption.
        if re.search(r"GLOBAL |allowlisted|add_safe_globals", text):
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise WeightsError(
                f"refused to load {path} for safety: it holds Python objects{what} that would "
                "run code when unpickled; save only the state_dict (torch.save(model.state_dict(), "
                "...)) or convert it to .safetensors") from None
        raise WeightsError(f"cannot read weights file {path} (corrupt?): {_one_line(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as exc:
        # torch.load reports truncated or foreign files with a zoo of exception types.
        raise WeightsError(f"cannot read weights file {path} (corrupt or not a torch file): "
                           f"{_one_line(exc)}") from None


def _is_state_dict(obj: object) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _unwrap(obj: object, path: Path) -> StateDict:
    for _ in range(4):  # {"model": {"state_dict": ...}} occurs; deeper nesting does not
        if _is_state_dict(obj):
            return dict(obj)  # type: ignore[arg-type]
        if not isinstance(obj, Mapping):
            raise WeightsError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
        if not obj:
            raise WeightsError(f"weights file {path} holds an empty dict")
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:6]))
            raise WeightsError(
                f"weights file {path} holds no state dict: top-level keys are {keys}; expected "
                f"tensors, or a state dict under one of {', '.join(WRAPPER_KEYS)}")
        obj = inner
    raise WeightsError(f"weights file {path} nests its state dict too deeply")


def _strip_prefixes(state: StateDict, keep_if_in: Mapping[str, object] | None = None) -> StateDict:
    """Remove wrapper prefixes carried by every key, unless the model's own keys carry them too.

    A user's model may genuinely have a top-level attribute called ``module``; ``keep_if_in``
    (the model's state dict) keeps such keys intact.
    """
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if keep_if_in and all(k.startswith(prefix) for k in keep_if_in):
                continue
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _mismatches(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """A one-line description of missing, unexpected and mis-shaped keys ('' when none)."""
    # BatchNorm fills a missing num_batches_tracked itself (older checkpoints lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
              for k in state if k in expected and state[k].shape != expected[k].shape]
    parts: List[str] = []
    for label, items in (("shape mismatch", shapes), ("missing", missing), ("unexpected", unexpected)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label}: {'; '.join(items[:_SHOW])}{more}")
    return " | ".join(parts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text[:300] + ("…" if len(text) > 300 else "")
