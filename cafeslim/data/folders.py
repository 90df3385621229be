"""Image folders in ImageNet layout: ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*``.

Scanning lists file names only (``os.scandir``, no image is opened), so a million-image folder
is indexed in seconds. Images are decoded when a batch needs them; an unreadable or corrupt
file is then replaced by the next readable sample and counted (:attr:`ImageFolder.bad`), never
fatal: one bad JPEG must not stop a day of training. Layout mistakes, on the other hand, are
reported before anything runs, as a one-line :class:`~cafeslim.errors.DataError`.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import DataError

IMG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif",
                            ".tiff", ".gif"})
_MAX_CONSECUTIVE_BAD = 64  # after this many unreadable files in a row, the folder is broken


@dataclass(frozen=True)
class FolderSplit:
    """The files of one split (``train/`` or ``val/``).

    Attributes:
        root: the split folder.
        classes: class folder names, sorted; the label of a class is its index here.
        samples: ``(path, label)`` of every image file, sorted by class then file name.
    """

    root: Path
    classes: Tuple[str, ...]
    samples: Tuple[Tuple[str, int], ...]


def _image_files(folder: str) -> List[str]:
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if os.path.splitext(entry.name)[1].lower() in IMG_EXTENSIONS and entry.is_file():
                out.append(entry.path)
    out.sort()
    return out


def scan_split(root: Union[str, Path], classes: Optional[Sequence[str]] = None) -> FolderSplit:
    """List the class folders and image files of one split folder.

    Args:
        root: a folder of class folders.
        classes: the expected class names (those of ``train/``) when scanning ``val/``.

    Raises:
        DataError: the folder is missing or empty, a class folder holds no images, or the
            classes differ from ``classes``.

    Example:
        >>> split = scan_split("imagenet/train")          # doctest: +SKIP
        >>> len(split.classes), len(split.samples)         # doctest: +SKIP
        (1000, 1281167)
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    with os.scandir(root) as it:
        found = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise DataError(f"data folder {root} holds no class folders (expected {root}/<class>/*.jpg)")
    if classes is not None and list(found) != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if extra:
            parts.append(f"not in train/: {_few(extra)}")
        raise DataError(f"classes of {root} do not match train/: {'; '.join(parts)}")
    samples: List[Tuple[str, int]] = []
    for label, name in enumerate(found):
        files = _image_files(os.path.join(root, name))
        if not files:
            raise DataError(f"class folder {root / name} holds no images "
                            f"({', '.join(sorted(IMG_EXTENSIONS))})")
        samples.extend((f, label) for f in files)
    return FolderSplit(root=root, classes=tuple(found), samples=tuple(samples))


def _few(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def scan_imagenet(root: Union[str, Path]) -> Tuple[FolderSplit, Optional[FolderSplit]]:
    """Scan ``root/train`` and, when present, ``root/val`` (same classes required).

    Raises:
        DataError: ``root`` missing or empty, no ``train/``, or any :func:`scan_split` error.

    Example:
        >>> train, val = scan_imagenet("imagenet")         # doctest: +SKIP
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder")
    if not any(True for _ in os.scandir(root)):
        raise DataError(f"data folder {root} is empty (expected {root}/train/<class>/*.jpg)")
    if not (root / "train").is_dir():
        raise DataError(f"data folder {root} has no train/ folder "
                        f"(expected ImageNet layout: {root}/train/<class>/*.jpg)")
    train = scan_split(root / "train")
    val = scan_split(root / "val", train.classes) if (root / "val").is_dir() else None
    return train, val


@contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run a random transform under a fixed seed (python, numpy and torch global RNGs).

    In a worker process the global RNGs belong to that sample alone; in the main process
    (``workers=0``) they are restored afterwards so that training randomness does not depend
    on how many images were decoded.
    """
    if seed is None:
        yield
        return
    restore = get_worker_info() is None
    if restore:
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        if restore:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


def split_key(key: Any) -> Tuple[int, Optional[int]]:
    """``(index, sample_seed)`` from a sampler key (a plain index has no seed)."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), None


class ImageFolder(Dataset):
    """Decoded, transformed images of a list of ``(path, label)`` samples.

    Indexing accepts a plain index or ``(index, seed)`` from
    :class:`~cafeslim.data.loaders.ResumableSampler`; the seed makes random augmentation a
    function of (run seed, epoch, sample), which is what exact resume needs.

    Attributes:
        bad: number of unreadable files met so far, shared with worker processes.

    Example:
        >>> train, _ = scan_imagenet("imagenet")                       # doctest: +SKIP
        >>> ds = ImageFolder(train.samples, transform)                  # doctest: +SKIP
        >>> image, label = ds[0]                                        # doctest: +SKIP
    """

    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Optional[Callable] = None,
                 bad_counter: Any = None):
        self.samples = list(samples)
        self.transform = transform
        # A shared integer: worker processes inherit it, so the main process sees their counts.
        self._bad = bad_counter if bad_counter is not None else multiprocessing.Value("q", 0)

    @property
    def bad(self) -> int:
        return int(self._bad.value)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> Any:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings on real-world files
            with open(path, "rb") as fh:
                img = Image.open(fh)
                return img.convert("RGB")  # forces decoding: truncated files fail here

    def __getitem__(self, key: Any) -> Tuple[Any, int]:
        index, seed = split_key(key)
        n = len(self.samples)
        for attempt in range(min(n, _MAX_CONSECUTIVE_BAD)):
            path, label = self.samples[(index + attempt) % n]
            try:
                img = self._load(path)
            except Exception:  # noqa: BLE001 - any decoder failure means "skip this file"
                with self._bad.get_lock():
                    self._bad.value += 1
                continue
            with seeded(seed):
                return (self.transform(img) if self.transform else img), label
        raise DataError(f"{_MAX_CONSECUTIVE_BAD} unreadable images in a row near "
                        f"{self.samples[index][0]}; is the data folder intact?")


class Subset(Dataset):
    """A view on some indices of a dataset that forwards ``(index, seed)`` keys.

    Example:
        >>> part = Subset(ds, [0, 5, 9]); len(part)                     # doctest: +SKIP
        3
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(map(int, indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Any) -> Any:
        index, seed = split_key(key)
        inner = self.indices[index]
        return self.dataset[(inner, seed) if seed is not None else inner]
