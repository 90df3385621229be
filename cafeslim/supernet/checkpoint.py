"""Atomic, verifiable training checkpoints (``runs/<name>/last.pt``).

A checkpoint holds everything that a resumed run needs to continue *exactly* where it
stopped: model weights and buffers, optimizer, LR scheduler and GradScaler states, every RNG
(python ``random``, the numpy Generator that samples widths, torch CPU and CUDA), the step,
the epoch and the position in the epoch, a fingerprint of the model/graph/search space and the
resolved training settings.

**Atomic.** The file is written to a temporary name in the same folder, flushed, fsynced and
renamed over the old one (``os.replace`` is atomic on POSIX and Windows). A run killed at any
instant — even with SIGKILL in the middle of a save — leaves either the previous checkpoint or
the new one, never a torn file.

**Safe to load.** Everything is stored as tensors and plain python types (numpy RNG state
included), so :func:`load_checkpoint` uses ``torch.load(weights_only=True)``: a checkpoint
from somewhere else cannot execute code.

**Checked.** A missing, truncated or corrupt file, or one written for another model or search
space, is a one-line :class:`~cafeslim.errors.CheckpointError`; nothing is modified on error.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from ..config import atomic_write
from ..errors import CheckpointError

FORMAT = "cafeslim-supernet"
VERSION = 1
_REQUIRED = ("model", "optimizer", "step", "epoch", "position", "rng", "fingerprint")


def fingerprint(model_name: str, graph: Any, space: Any) -> Dict[str, Any]:
    """What a checkpoint must match to be resumed: model, channel groups and bins.

    Args:
        model_name: canonical model name (``ModelInfo.name``).
        graph: the :class:`~cafeslim.graph.ChannelGraph`.
        space: the :class:`~cafeslim.bins.space.SearchSpace`.

    Example:
        >>> fp = fingerprint("timm:test_resnet", graph, space)      # doctest: +SKIP
        >>> sorted(fp)                                              # doctest: +SKIP
        ['bins', 'channels', 'groups', 'model', 'searchable']
    """
    groups = list(getattr(graph, "groups", []))
    return {
        "model": str(model_name),
        "groups": len(groups),
        "channels": [int(g.channels) for g in groups],
        "searchable": [int(g.id) for g in groups if getattr(g, "searchable", False)],
        "bins": [[int(g.gid), [[int(a), int(b)] for a, b in g.bounds]]
                 for g in getattr(space, "groups", [])],
    }


def capture_rng(generator: Optional[np.random.Generator] = None) -> Dict[str, Any]:
    """Every RNG state, as tensors and plain python types (loadable with weights_only).

    Example:
        >>> rng = np.random.default_rng(0); state = capture_rng(rng)
        >>> restore_rng(state, rng)
    """
    state: Dict[str, Any] = {
        "python": _plain(random.getstate()),
        "numpy_global": _plain(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
    }
    if generator is not None:
        state["numpy"] = _plain(generator.bit_generator.state)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], generator: Optional[np.random.Generator] = None) -> None:
    """Restore what :func:`capture_rng` saved (CUDA only when this process has CUDA)."""
    random.setstate(_python_state(state["python"]))
    glob = dict(state["numpy_global"])
    np.random.set_state(_numpy_global_state(glob))
    torch.set_rng_state(state["torch"].cpu())
    if generator is not None and "numpy" in state:
        generator.bit_generator.state = _from_plain(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _plain(value: Any) -> Any:
    """numpy scalars/arrays -> python ints/lists; tuples kept (weights_only allows them)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_from_plain(v) for v in value)
    return value


def _python_state(value: Any) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _numpy_global_state(value: Dict[str, Any]) -> Dict[str, Any]:
    return _from_plain(value)


def save_checkpoint(path: Union[str, Path], *, model: Mapping[str, torch.Tensor],
                    optimizer: Mapping[str, Any], scheduler: Optional[Mapping[str, Any]] = None,
                    scaler: Optional[Mapping[str, Any]] = None, rng: Mapping[str, Any],
                    step: int, epoch: int, position: int, fingerprint: Mapping[str, Any],
                    config: Optional[Mapping[str, Any]] = None,
                    extra: Optional[Mapping[str, Any]] = None, kind: str = FORMAT) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename).

    Args:
        path: destination, usually ``run_dir / "last.pt"``.
        model: the model's ``state_dict()``.
        optimizer, scheduler, scaler: their ``state_dict()`` (scheduler/scaler optional).
        rng: from :func:`capture_rng`.
        step: optimizer steps done; epoch: the current epoch; position: batches of it done.
        fingerprint: from :func:`fingerprint`.
        config: the resolved training settings (plain dict).
        extra: anything else to keep (plain types).
        kind: the format tag (``cafeslim-train`` for :mod:`cafeslim.training`'s checkpoints).

    Example:
        >>> save_checkpoint(run / "last.pt", model=net.state_dict(), optimizer=opt.state_dict(),
        ...                 rng=capture_rng(gen), step=100, epoch=0, position=100,
        ...                 fingerprint=fp)                          # doctest: +SKIP
    """
    path = Path(path)
    payload = {
        "format": kind, "version": VERSION, "time": time.time(),
        "model": {k: v.detach() for k, v in model.items()},
        "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": dict(rng),
        "step": int(step), "epoch": int(epoch), "position": int(position),
        "fingerprint": dict(fingerprint), "config": dict(config or {}), "extra": dict(extra or {}),
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: Union[str, Path],
                    expect_fingerprint: Optional[Mapping[str, Any]] = None, *,
                    kind: str = FORMAT) -> Dict[str, Any]:
    """Read and check a checkpoint (on CPU, ``weights_only=True``).

    Args:
        path: the checkpoint file.
        expect_fingerprint: when given, the checkpoint must have been made for this model,
            channel graph and search space.
        kind: the format tag the file must carry (a training checkpoint is not a supernet's).

    Returns:
        The checkpoint dict (keys as in :func:`save_checkpoint`).

    Raises:
        CheckpointError: missing file; ``corrupt or truncated checkpoint X``; not a cafeslim
            supernet checkpoint; ``checkpoint X was made for model A, not B``; or made for
            another channel graph / search space of the same model.

    Example:
        >>> ckpt = load_checkpoint("runs/r18/last.pt", fp)           # doctest: +SKIP
        >>> ckpt["step"]                                              # doctest: +SKIP
        1200
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - zip, pickle and storage errors all mean a bad file
        raise CheckpointError(f"corrupt or truncated checkpoint {path}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != kind:
        what = kind.removeprefix("cafeslim-")
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise CheckpointError(f"{path} is not a cafeslim {what} checkpoint"
                              + (f" (it is a {found} one)" if isinstance(found, str) else ""))
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt.get('version')}; "
                              f"this cafeslim reads up to {VERSION} (upgrade cafeslim)")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"corrupt or truncated checkpoint {path} (no {', '.join(missing)})")
    if expect_fingerprint is not None:
        check_fingerprint(path, ckpt["fingerprint"], expect_fingerprint)
    return ckpt


def check_fingerprint(path: Union[str, Path], found: Mapping[str, Any],
                      expected: Mapping[str, Any]) -> None:
    """Raise a one-line CheckpointError when a checkpoint belongs to another run."""
    a, b = found.get("model"), expected.get("model")
    if a != b:
        raise CheckpointError(f"checkpoint {path} was made for model {a}, not {b}")
    for key, what in (("groups", "channel groups"), ("channels", "channel counts"),
                      ("searchable", "searchable groups"), ("bins", "bins (search space)")):
        if _norm(found.get(key)) != _norm(expected.get(key)):
            raise CheckpointError(f"checkpoint {path} was made for other {what} of model {b} "
                                  f"(different num_classes, input size, bins or beta?)")


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value
