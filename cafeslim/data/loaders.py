"""Data loaders for supernet training and search: D_tr, D_val, the test split, calibration.

:func:`build_data` turns ``--data`` (``demo`` or a folder) into a :class:`Data`. The task
(:mod:`cafeslim.tasks`) reads the samples — the digits or an ImageNet-layout folder for
classification (:func:`classification_source`), image + mask folders for segmentation, a label
table for multi-label — and this module splits and loads them alike:

* ``train`` — D_tr, the training images minus D_val, with the training augmentation;
* ``val`` — D_val, split off the training images by ``val_split`` and the seed (the paper's
  D_tr / D_val): the search measures sub-networks on it, never on the real validation set;
* ``test`` — the real ``val/`` folder (or the demo's fixed held-out split), for final
  evaluation only;
* ``calib`` — training images in a fixed order, for BN recalibration (the same batches for
  every sub-network, so that their accuracies are compared fairly).

**Exact resume.** The training order is a permutation drawn from (seed, epoch) alone, and
every sample carries its own augmentation seed derived from (seed, epoch, index), so the
batches of an epoch do not depend on when the loader was created, on the number of workers or
on what ran before. :meth:`Data.epoch_batches` with ``position=p`` skips the first ``p``
batches without loading them. Under DDP the permutation is sharded as
:class:`~torch.utils.data.DistributedSampler` does (it is one), so every rank gets the same
number of batches.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import DataError
from ..models import ModelInfo
from ..tasks.base import DataSource
from .augment import PadCrop, TimmOnTensors, default_shift, resolve_aug
from .composite import DEMO_HARD, make_hard
from .demo import DEMO_CLASSES, DigitsDataset, demo_splits, load_digit_images
from .folders import FolderSplit, ImageFolder, Subset, scan_imagenet
from .transforms import build_transforms, data_config

DEMO = "demo"
BUILTIN = (DEMO, DEMO_HARD)  # in-memory data sets made of the bundled digits
_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (SplitMix64 steps); cheap and deterministic.

    Example:
        >>> mix_seed(0, 1) != mix_seed(1, 0)
        True
    """
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x >> 1


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch and seeds every sample's augmentation.

    Yields ``(index, sample_seed)`` keys. ``set_epoch(e)`` picks the permutation of epoch
    ``e``; ``set_position(p, batch_size)`` skips this rank's first ``p`` batches of it (for
    the current epoch only: the next ``set_epoch`` starts from the beginning again).

    Example:
        >>> s = ResumableSampler(range(10), num_replicas=1, rank=0, seed=0)
        >>> s.set_epoch(3); s.set_position(2, batch_size=4)
        >>> len(list(s))
        2
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=mix_seed(seed) % 2**62, drop_last=False)
        self.run_seed = int(seed)
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.skip = 0

    def set_position(self, batches: int, batch_size: int) -> None:
        self.skip = min(int(batches) * int(batch_size), self.num_samples)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(super().__iter__())[self.skip:]
        epoch = self.epoch
        return iter([(i, mix_seed(self.run_seed, epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


@dataclass
class Data:
    """Everything a training or search stage reads.

    Attributes:
        source: ``demo`` or the data folder.
        classes: class names; label ``i`` is ``classes[i]``.
        train: D_tr loader (drop_last, resumable through :meth:`epoch_batches`).
        val: D_val loader (evaluation transforms, sequential, every rank sees all of it).
        test: the real validation split (``val/`` or the demo's held-out digits); None when
            the folder has no ``val/``.
        calib: training images in a fixed order for BN recalibration (sharded under DDP).
        sampler: the train loader's :class:`ResumableSampler`.
        batch_size: per-process batch size.
        sizes: image counts of ``train``, ``val`` and ``test``.
        task: the name of the :mod:`cafeslim.tasks` task the data were read for.
    """

    source: str
    classes: Tuple[str, ...]
    train: DataLoader
    val: DataLoader
    test: Optional[DataLoader]
    calib: DataLoader
    sampler: ResumableSampler
    batch_size: int
    sizes: dict = field(default_factory=dict)
    _bad: Any = None
    task: str = "classification"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch on each rank (the last partial batch is dropped)."""
        return self.sampler.num_samples // self.batch_size

    @property
    def bad_images(self) -> int:
        """Unreadable images skipped so far, all loaders and workers together."""
        return int(self._bad.value) if self._bad is not None else 0

    def epoch_batches(self, epoch: int, position: int = 0) -> Iterator[Any]:
        """The training batches of ``epoch``, starting after its first ``position`` batches.

        Example:
            >>> for images, targets in data.epoch_batches(epoch=2, position=17):  # doctest: +SKIP
            ...     ...
        """
        self.sampler.set_epoch(epoch)
        self.sampler.set_position(position, self.batch_size)
        return iter(self.train)


@functools.lru_cache(maxsize=4)
def _scan(root: str) -> Tuple[FolderSplit, Optional[FolderSplit]]:
    return scan_imagenet(root)


def dataset_classes(data: str, task: Any = None) -> Tuple[str, ...]:
    """Class names of ``--data`` without building loaders (to size the classifier first).

    ``task`` (:func:`cafeslim.tasks.get_task`; None: classification) decides how the data are
    read: segmentation's classes include the background, multi-label's are the label names.

    Raises:
        DataError: see :func:`~cafeslim.data.folders.scan_imagenet` (or the task's reader).

    Example:
        >>> len(dataset_classes("demo"))
        10
    """
    from ..tasks import get_task

    t = get_task(task)
    t.check_builtin(data)
    return tuple(t.classes(data))


def folder_classes(data: str) -> Tuple[str, ...]:
    """Classification's classes: the digits' for built-in data, else ``train/``'s folders.

    Example:
        >>> folder_classes("demo")[:3]
        ('0', '1', '2')
    """
    if data in BUILTIN:
        return DEMO_CLASSES
    return _scan(os.path.abspath(data))[0].classes


def _dist_rank_world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def classification_source(data: str, info: ModelInfo, cfg: Any, bad: Any) -> DataSource:
    """Classification's samples: the digits (``demo``, ``demo-hard``) or an ImageNet folder.

    D_tr's dataset carries the resolved augmentation (:func:`train_augmentation`).

    Example:
        >>> src = classification_source("demo", info, TrainConfig(), None)   # doctest: +SKIP
        >>> len(src.pool), len(src.test)                                     # doctest: +SKIP
        (1438, 359)
    """
    from ..config import aug_of

    dcfg = data_config(info, cfg.img_size)
    augc = aug_of(cfg)
    if data in BUILTIN:
        images, labels, pool, test_idx = _builtin_images(data)
        full = DigitsDataset(images, labels, dcfg["input_size"], dcfg["mean"], dcfg["std"])
        train_ds = eval_ds = full
        test_ds = Subset(full, test_idx)
        classes, workers, source = DEMO_CLASSES, 0, data  # in memory: workers only add latency
    else:
        train_split, val_split = _scan(os.path.abspath(data))
        train_tf, eval_tf = build_transforms(info, cfg.img_size, augc)
        train_ds = ImageFolder(train_split.samples, train_tf, bad)
        eval_ds = ImageFolder(train_split.samples, eval_tf, bad)
        pool = np.arange(len(train_split.samples))
        test_ds = ImageFolder(val_split.samples, eval_tf, bad) if val_split else None
        # More workers than cores only adds processes (PyTorch warns); batches do not depend on it.
        workers = min(int(cfg.workers), os.cpu_count() or 1)
        classes, source = train_split.classes, str(data)
    train_ds = _augmented(train_ds, eval_ds, augc, source, info, dcfg, cfg.img_size)
    return DataSource(train_ds, eval_ds, np.asarray(pool), test_ds, tuple(classes), workers, source)


def build_data(data: str, info: ModelInfo, cfg: Any, task: Any = None) -> Data:
    """Build the loaders of ``--data`` for a model, following its preprocessing.

    Args:
        data: ``demo``, ``demo-hard`` (:mod:`.composite`) or a folder in ImageNet layout (``train/<class>/*``, optional ``val/``).
        info: the created model (input size, mean/std, interpolation, crop).
        cfg: a :class:`~cafeslim.config.TrainConfig` (or anything with ``batch_size``,
            ``workers``, ``seed``, ``val_split``, ``img_size`` and ``device``; optionally the
            :class:`~cafeslim.config.AugConfig` fields, see
            :func:`~cafeslim.data.augment.resolve_aug`).
        task: the :mod:`cafeslim.tasks` task (or its name) whose data these are (None:
            classification); it reads the demo or the folder (:meth:`Task.source`), this
            function splits and loads them alike for every task.

    Raises:
        DataError: layout errors (see :func:`~cafeslim.data.folders.scan_imagenet` and the
            task's reader), or a training set smaller than one global batch.

    Example:
        >>> info = create("timm:test_resnet", num_classes=10)              # doctest: +SKIP
        >>> data = build_data("demo", info, TrainConfig())                # doctest: +SKIP
        >>> data.num_classes, data.sizes["val"]                           # doctest: +SKIP
        (10, 144)
    """
    from ..tasks import get_task

    t = get_task(task)
    t.check_builtin(data)
    rank, world = _dist_rank_world()
    bad = multiprocessing.Value("q", 0)
    src = t.source(data, info, cfg, bad)
    workers, source = src.workers, src.source
    tr_idx, val_idx = split_val(src.pool, cfg.val_split, cfg.seed)
    need = cfg.batch_size * world
    if len(tr_idx) < need:
        raise DataError(f"the training set of {source} has {len(tr_idx)} images after holding out "
                        f"D_val, fewer than one global batch ({need}); lower --batch-size")
    d_tr = Subset(src.train, tr_idx)
    pin = str(getattr(cfg, "device", "cpu")) != "cpu" and torch.cuda.is_available()
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    sampler = ResumableSampler(d_tr, num_replicas=world, rank=rank, seed=cfg.seed)
    # A private generator: creating a loader iterator must not consume the global torch RNG,
    # or a resumed run (which creates one mid-epoch) would diverge from an uninterrupted one.
    train = DataLoader(d_tr, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                       generator=torch.Generator().manual_seed(cfg.seed), **common)
    calib_sampler = ResumableSampler(d_tr, num_replicas=world, rank=rank, seed=cfg.seed + 1)
    calib = DataLoader(d_tr, batch_size=cfg.batch_size, sampler=calib_sampler,
                       generator=torch.Generator().manual_seed(cfg.seed), **common)
    eval_kw = dict(batch_size=cfg.batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    val = DataLoader(Subset(src.eval, val_idx), **eval_kw)
    test = DataLoader(src.test, **eval_kw) if src.test is not None else None
    sizes = {"train": len(tr_idx), "val": len(val_idx), "test": len(src.test) if src.test else 0}
    return Data(source=source, classes=tuple(src.classes), train=train, val=val, test=test,
                calib=calib, sampler=sampler, batch_size=cfg.batch_size, sizes=sizes, _bad=bad,
                task=t.name)


def train_augmentation(cfg: Any, source: str, size: int) -> str:
    """The augmentation ``build_data`` gives D_tr: ``timm``, ``shift`` or ``none``.

    Example:
        >>> from cafeslim.config import TrainConfig
        >>> train_augmentation(TrainConfig(), "demo", 64)
        'shift'
    """
    from ..config import aug_of

    augc = aug_of(cfg)
    return resolve_aug(augc.aug if augc else None, source, size,
                       wants_timm=augc is not None and augc.wants_timm)


def _augmented(train_ds: Any, eval_ds: Any, augc: Any, source: str, info: ModelInfo,
               dcfg: Any, img_size: Optional[int]) -> Any:
    """D_tr's dataset under the resolved augmentation (see :mod:`cafeslim.data.augment`)."""
    size = dcfg["input_size"][-1]
    aug = train_augmentation(augc, source, size)
    if aug == "shift":  # on top of the evaluation transforms
        shift = augc.shift if augc is not None else None
        return PadCrop(eval_ds, default_shift(size) if shift is None else shift,
                       hflip=(augc.hflip or 0.0) if augc is not None else 0.0)
    if aug == "none":
        return eval_ds
    if source in BUILTIN:  # tensors: timm's transform on each digit as an image
        train_tf, _ = build_transforms(info, img_size, augc)
        return TimmOnTensors(eval_ds, train_tf, dcfg["mean"], dcfg["std"])
    return train_ds


def unsharded(loader: DataLoader) -> DataLoader:
    """``loader`` over all of its dataset, as one process reads it (itself when not sharded).

    Under ``torchrun`` the calibration loader is sharded; a rank that scores width vectors on
    its own (:mod:`cafeslim.search.parallel`) recalibrates on the batches a single process
    would use, so that the search's result does not depend on the number of processes.

    Example:
        >>> unsharded(data.calib).sampler.num_replicas                  # doctest: +SKIP
        1
    """
    s = loader.sampler
    if not isinstance(s, ResumableSampler) or s.num_replicas == 1:
        return loader
    whole = ResumableSampler(loader.dataset, num_replicas=1, rank=0, seed=s.run_seed,
                             shuffle=s.shuffle)
    whole.set_epoch(s.epoch)
    gen = torch.Generator().manual_seed(loader.generator.initial_seed()) \
        if loader.generator is not None else None
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=whole,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      persistent_workers=loader.persistent_workers, generator=gen)


def _builtin_images(data: str) -> Tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """``(images, labels, training indices, test indices)`` of ``demo`` or ``demo-hard``."""
    if data == DEMO:
        images, labels = load_digit_images()
        splits = demo_splits(labels.numpy())
        return images, labels, splits.train, splits.test
    h = make_hard()
    n_tr, n_te = len(h.train_labels), len(h.test_labels)
    return (torch.cat([h.train_images, h.test_images]), torch.cat([h.train_labels, h.test_labels]),
            np.arange(n_tr), np.arange(n_tr, n_tr + n_te))


def split_val(indices: Sequence[int], fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (D_tr, D_val) by a permutation fixed by ``seed``.

    D_val gets ``round(fraction × n)`` images (at least one when ``fraction > 0``); both parts
    are returned sorted.

    Example:
        >>> tr, va = split_val(range(100), 0.1, seed=0); len(tr), len(va)
        (90, 10)
    """
    indices = np.asarray(indices, dtype=np.int64)
    n_val = int(round(fraction * len(indices)))
    if fraction > 0:
        n_val = min(max(n_val, 1), max(len(indices) - 1, 0))
    perm = np.random.default_rng(mix_seed(seed, 0xDA7A)).permutation(len(indices))
    return np.sort(indices[perm[n_val:]]), np.sort(indices[perm[:n_val]])
