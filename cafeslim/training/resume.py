"""What a training checkpoint must match, and the small files around it.

:func:`model_fingerprint` names a model by its tensors' names and shapes; :func:`load_resume`
accepts a ``last.pt`` only for that model, those settings (less the where-it-runs ones of
:data:`~cafeslim.config.RETRAIN_RESUMABLE`) and that number of processes; ``best.pt`` and
``metrics.jsonl`` are written atomically.

Example:
    >>> model_fingerprint(nn.Linear(2, 3), "lin")["model"]
    'lin'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from ..config import RETRAIN_RESUMABLE, atomic_write, changed_settings
from ..errors import CheckpointError, OutputExistsError
from ..supernet.checkpoint import load_checkpoint

KIND = "cafeslim-train"
LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


def model_fingerprint(model: nn.Module, name: str = "") -> Dict[str, Any]:
    """What a training checkpoint must match: the model name and every tensor's name and shape.

    Example:
        >>> model_fingerprint(nn.Linear(2, 3), "lin")["model"]
        'lin'
    """
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return {"model": name or type(model).__name__,
            "shapes": hashlib.sha1(text.encode()).hexdigest()[:16]}


def load_resume(path: Path, fp: Dict[str, Any], config: Dict[str, Any],
                 world_size: int = 1) -> Dict[str, Any]:
    """The checkpoint to resume, checked against this model, these settings and processes."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint to resume ({path} does not exist)")
    ckpt = load_checkpoint(path, kind=KIND)
    saved_world = int((ckpt.get("extra") or {}).get("world_size", 1))
    if saved_world != world_size:  # another global batch, data sharding and schedule
        raise CheckpointError(f"checkpoint {path} was made by {saved_world} process(es), this "
                              f"run has {world_size}; resume with the same torchrun "
                              "--nproc_per_node")
    found = ckpt.get("fingerprint") or {}
    if found.get("model") != fp["model"] or found.get("shapes") != fp["shapes"]:
        raise CheckpointError(f"checkpoint {path} was made for another model "
                              f"({found.get('model')}), not this {fp['model']}")
    old = ckpt.get("config") or {}
    changed = {k: v for k, v in changed_settings(old, {k: config[k] for k in old if k in config}).items()
               if k not in RETRAIN_RESUMABLE}
    if changed:
        diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(f"checkpoint {path} was made with other settings ({diff}); "
                              "resume with the training's own settings")
    return ckpt


def refuse_existing(out: Path) -> None:
    if (out / LAST).exists():
        raise OutputExistsError(f"{out} already holds a training checkpoint; pass --resume to "
                                "continue it, or --force / another --out to start over")


def write_metrics(path: Path, records: List[Dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_best(path: Path, model: nn.Module, record: Dict[str, Any]) -> None:
    """``best.pt``: the weights, the epoch and its holdout score (``holdout_<metric>``)."""
    payload = {"format": f"{KIND}-best", "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "epoch": record["epoch"],
               **{k: v for k, v in record.items() if k.startswith("holdout_")}}
    atomic_write(path, lambda fh: torch.save(payload, fh))


__all__ = ["BEST", "KIND", "LAST", "METRICS", "load_resume", "model_fingerprint",
           "refuse_existing", "save_best", "write_metrics"]
