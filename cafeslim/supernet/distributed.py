"""Multi-process training: ``torchrun --nproc_per_node N -m cafeslim search ...``.

torchrun starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in the environment; :func:`session` turns those into a
process group (NCCL on CUDA, gloo on CPU) and tears it down at the end, also on errors. Without
those variables (or with ``WORLD_SIZE=1``) everything here is a no-op and training runs in one
process, so the same code path serves both.

The rules that keep N processes one training run:

* every rank seeds its width sampler identically (never ``seed + rank``) — the min-min step
  all-reduces the candidates' losses, so every rank trains the same sub-network and DDP
  averages gradients of one set of weights (:mod:`cafeslim.supernet.minmin`);
* the data are sharded by :class:`~cafeslim.data.loaders.ResumableSampler`;
* only rank 0 writes files and draws progress (:func:`is_main`);
* checkpoints are written by rank 0 at a step every rank agrees on, and :func:`agree` (one
  all-reduce, which is also a barrier) makes every rank fail together if the write failed,
  instead of leaving the others blocked in the next collective.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

_TIMEOUT = datetime.timedelta(minutes=30)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        backend: ``nccl``, ``gloo`` or None when not distributed.
        device: the torch device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a torch device (``cuda:LOCAL_RANK`` on CUDA).

    Raises:
        ConfigError: ``cuda`` asked for but not available, or an unknown name.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    name = str(name).lower()
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def current(device: str = "auto") -> DistInfo:
    """This process's :class:`DistInfo` (initialising nothing).

    Example:
        >>> current("cpu").world_size
        1
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        backend = dist.get_backend()
        dev = resolve_device("cpu" if backend == "gloo" else device, local)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, backend, dev)
    return DistInfo(device=resolve_device(device))


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    NCCL when this process trains on CUDA, gloo otherwise. Idempotent: an existing process
    group is reused.

    Raises:
        ConfigError: malformed torchrun variables, or ``--device cuda`` without CUDA.

    Example:
        >>> info = init_distributed("auto")      # under torchrun: rank/world from the env
    """
    world = env_world_size()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current(device)
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run without torchrun")
    try:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE is set but RANK is missing or malformed; launch with "
                          "torchrun --nproc_per_node N -m cafeslim ...") from None
    dev = resolve_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                            timeout=_TIMEOUT)
    return DistInfo(rank, world, local, backend, dev)


def teardown() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "auto") -> Iterator[DistInfo]:
    """Initialise distributed training from the environment for a block; always tear down.

    A process group that existed before the block (a caller's, e.g. a test harness) is left
    alone.

    Example:
        >>> with session("auto") as info:
        ...     result = train_supernet(...)       # doctest: +SKIP
    """
    owned = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device)
    try:
        yield info
    finally:
        if owned:
            teardown()


_LOCAL = [0]  # depth of nested local_only() blocks


@contextmanager
def local_only() -> Iterator[None]:
    """A block in which this rank computes alone: library collectives are skipped.

    The parallel search (:mod:`cafeslim.search.parallel`) scores different width vectors on
    different ranks; BatchNorm recalibration must then not average its statistics across
    ranks (they measure different sub-networks), see :func:`collective_world`.

    Example:
        >>> with local_only():
        ...     collective_world()
        1
    """
    _LOCAL[0] += 1
    try:
        yield
    finally:
        _LOCAL[0] -= 1


def collective_world() -> int:
    """Ranks a library collective spans now: 1 without a process group or in :func:`local_only`.

    Example:
        >>> collective_world()
        1
    """
    if _LOCAL[0] or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process).

    Example:
        >>> all_gather_object({"k": 1})
        [{'k': 1}]
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def agree(ok: bool) -> bool:
    """True only if ``ok`` on every rank; one all-reduce, so also a barrier.

    Example:
        >>> agree(True)
        True
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return bool(ok)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def wrap_ddp(supernet: nn.Module, info: DistInfo) -> nn.Module:
    """Wrap a supernet in DistributedDataParallel when running distributed (else unchanged).

    Every parameter reaches the loss through ``index_select`` whatever the sub-network, so
    ``find_unused_parameters`` is not needed (it would cost a graph traversal per step).
    Wrapping broadcasts rank 0's weights, so every rank starts from the same supernet.

    Example:
        >>> model = wrap_ddp(supernet.to(info.device), info)   # doctest: +SKIP
        >>> minmin_step(model, space, x, y, loss_fn, opt, cfg, rng, progress=0.0)  # doctest: +SKIP
    """
    if not info.distributed:
        return supernet
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(supernet, device_ids=ids, output_device=ids[0] if ids else None,
                                   broadcast_buffers=True, find_unused_parameters=False)


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result or raises its error.

    For the checks and writes only rank 0 may do (create, check or delete the output folder):
    the other ranks wait for it, and fail with the same error instead of racing it or waiting
    in the next collective. In a single process it is just ``fn()``.

    Example:
        >>> on_main(lambda: 42)
        42
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return fn()
    result: Any = None
    error: Optional[BaseException] = None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
