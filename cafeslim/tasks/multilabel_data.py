"""Multi-label data: the digit-attributes demo, and image folders with a table of 0/1 labels.

**Demo** (``--data demo --task multilabel``): the demo digits (same images, same fixed test
split as the classification demo) with four binary labels each, :data:`DEMO_LABELS`: even,
greater than four, prime, and closed loop (0, 4, 6, 8, 9: this set draws its 4s closed).

**Folders** (``--data DIR``), one of two layouts:

* ``DIR/train/labels.csv`` and optionally ``DIR/val/labels.csv`` (the test split): a header
  row (first column the image, then the label names), then one row per image: its file name
  relative to the split folder and a 0 or 1 per label. A split folder may hold CelebA's
  attribute file ``list_attr_celeba.txt`` instead (below).
* CelebA's own: ``DIR/list_attr_celeba.txt`` (a count line, a header line of the 40
  attribute names, then ``NAME  1 -1 ...`` rows; 1 is 1, -1 is 0), ``DIR/list_eval_partition.txt``
  (``NAME 0|1|2``) and the images in ``DIR/img_align_celeba/`` (or ``DIR/``). Partition 0 is
  the training split and partition 2 the test split; partition 1 (CelebA's validation) is not
  read, since D_val and the training holdout are split off the training images as for every
  other data set.

A listed image that does not exist, a value other than 0/1 (-1/1 in CelebA's file), a row of
the wrong length or test labels that differ from the training ones is a one-line
:class:`~cafeslim.errors.DataError` before anything runs. Images not listed are ignored.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

DEMO_LABELS = ("even", "greater_than_4", "prime", "closed_loop")
_DEMO_SETS = ({0, 2, 4, 6, 8}, {5, 6, 7, 8, 9}, {2, 3, 5, 7}, {0, 4, 6, 8, 9})
CSV_NAME, CELEBA_ATTR, CELEBA_PARTITION = "labels.csv", "list_attr_celeba.txt", "list_eval_partition.txt"
LAYOUT = (f"DIR/train/{CSV_NAME} (header: image,LABEL,...; rows: file,0|1,...) with optional "
          f"DIR/val/{CSV_NAME}, or CelebA's {CELEBA_ATTR} + {CELEBA_PARTITION}")


def demo_label_table() -> torch.Tensor:
    """``[10, 4]`` float 0/1: the :data:`DEMO_LABELS` of each digit.

    Example:
        >>> demo_label_table()[7].tolist()          # odd, > 4, prime, open
        [0.0, 1.0, 1.0, 0.0]
    """
    return torch.tensor([[float(d in s) for s in _DEMO_SETS] for d in range(10)])


class Relabel(Dataset):
    """A dataset of ``(image, class index)`` whose labels are rows of a table.

    Example:
        >>> Relabel([("img", 3)], demo_label_table())[0][1].tolist()
        [0.0, 0.0, 1.0, 0.0]
    """

    def __init__(self, dataset: Any, table: torch.Tensor):
        self.dataset, self.table = dataset, table

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Tuple[Any, torch.Tensor]:
        img, label = self.dataset[key]
        return img, self.table[int(label)]


@dataclass(frozen=True)
class LabelTable:
    """A split of a multi-label folder: label names, image paths and their 0/1 labels."""

    names: Tuple[str, ...]
    paths: Tuple[str, ...]
    labels: np.ndarray  # [N, L] float32

    def samples(self) -> List[Tuple[str, torch.Tensor]]:
        """``(path, label vector)`` pairs for :class:`~cafeslim.data.folders.ImageFolder`."""
        return [(p, torch.from_numpy(row)) for p, row in zip(self.paths, self.labels)]


def _values(cells: Sequence[str], where: str, names: Sequence[str], celeba: bool) -> List[float]:
    """One row's labels: 0/1 (CelebA: 1/-1), anything else is a DataError naming it."""
    good = {"1": 1.0, "-1": 0.0} if celeba else {"1": 1.0, "0": 0.0}
    out = []
    for name, cell in zip(names, cells):
        v = good.get(cell.strip())
        if v is None:
            want = "1 or -1" if celeba else "0 or 1"
            raise DataError(f"{where}: value {cell.strip()!r} for label {name!r} is not {want}")
        out.append(v)
    return out


def _table(rows: Sequence[Tuple[int, List[str]]], names: Tuple[str, ...], path: Path,
           images: Path, celeba: bool, keep: Optional[set] = None) -> LabelTable:
    """Check rows (length, values, files) into a :class:`LabelTable`."""
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: the header must name each label once")
    paths, labels, missing = [], [], []
    for line, cells in rows:
        if keep is not None and cells[0] not in keep:
            continue
        if len(cells) != len(names) + 1:
            raise DataError(f"{path} line {line}: {len(cells) - 1} labels, the header names "
                            f"{len(names)}")
        labels.append(_values(cells[1:], f"{path} line {line}", names, celeba))
        file = images / cells[0].strip()
        if not file.is_file():
            missing.append(cells[0].strip())
        paths.append(str(file))
    if missing:
        raise DataError(f"{path} lists {len(missing)} image(s) that are not in {images} "
                        f"(e.g. {missing[0]})")
    if not paths:
        raise DataError(f"{path} lists no image")
    return LabelTable(names, tuple(paths), np.asarray(labels, dtype=np.float32).reshape(-1, len(names)))


def read_csv(path: Path, images: Optional[Path] = None) -> LabelTable:
    """A ``labels.csv`` (header ``image,LABEL,...``; rows ``file,0|1,...``), images beside it.

    Example:
        >>> read_csv(Path("celeba/train/labels.csv")).names[:2]           # doctest: +SKIP
        ('Smiling', 'Male')
    """
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(i + 1, r) for i, r in enumerate(csv.reader(fh)) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path} is empty (expected a header row: image,LABEL,...)")
    names = tuple(c.strip() for c in rows[0][1][1:])
    return _table(rows[1:], names, path, images or path.parent, celeba=False)


def read_celeba(path: Path, images: Path, keep: Optional[set] = None) -> LabelTable:
    """CelebA's ``list_attr_celeba.txt`` (count line, header, ``NAME 1 -1 ...`` rows).

    Example:
        >>> read_celeba(Path("celeba/list_attr_celeba.txt"), Path("celeba/img_align_celeba")).names[0]  # doctest: +SKIP
        '5_o_Clock_Shadow'
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"{path} is not CelebA's attribute file (a count line, then a header line)")
    names = tuple(lines[1].split())
    rows = [(i + 3, ln.split()) for i, ln in enumerate(lines[2:]) if ln.strip()]
    return _table(rows, names, path, images, celeba=True, keep=keep)


def _split_table(folder: Path) -> Optional[LabelTable]:
    if (folder / CSV_NAME).is_file():
        return read_csv(folder / CSV_NAME)
    if (folder / CELEBA_ATTR).is_file():
        return read_celeba(folder / CELEBA_ATTR, folder)
    return None


def _partition(root: Path) -> Dict[str, int]:
    out = {}
    for i, ln in enumerate((root / CELEBA_PARTITION).read_text(encoding="utf-8").splitlines()):
        cells = ln.split()
        if not cells:
            continue
        if len(cells) != 2 or cells[1] not in ("0", "1", "2"):
            raise DataError(f"{root / CELEBA_PARTITION} line {i + 1}: expected NAME 0|1|2")
        out[cells[0]] = int(cells[1])
    return out


@functools.lru_cache(maxsize=4)
def scan_multilabel(root: str) -> Tuple[LabelTable, Optional[LabelTable]]:
    """``(training table, test table or None)`` of a multi-label folder; cached per folder.

    Raises:
        DataError: no known layout, missing images, values other than 0/1, rows of the wrong
            length, test labels that differ from the training ones.

    Example:
        >>> train, test = scan_multilabel("/data/celeba")                # doctest: +SKIP
        >>> len(train.names)                                             # doctest: +SKIP
        40
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data folder {base} does not exist")
    if (base / "train").is_dir():
        train = _split_table(base / "train")
        if train is None:
            raise DataError(f"{base / 'train'} holds no {CSV_NAME} (or {CELEBA_ATTR}); expected {LAYOUT}")
        test = _split_table(base / "val") if (base / "val").is_dir() else None
    elif (base / CELEBA_ATTR).is_file() and (base / CELEBA_PARTITION).is_file():
        part = _partition(base)
        images = base / "img_align_celeba" if (base / "img_align_celeba").is_dir() else base
        train = read_celeba(base / CELEBA_ATTR, images, {n for n, p in part.items() if p == 0})
        kept = {n for n, p in part.items() if p == 2}
        test = read_celeba(base / CELEBA_ATTR, images, kept) if kept else None
    else:
        raise DataError(f"multi-label data folder {base} has no known layout: {LAYOUT}")
    if test is not None and test.names != train.names:
        raise DataError(f"the test labels of {base} ({', '.join(test.names[:3])}, ...) differ "
                        f"from the training labels ({', '.join(train.names[:3])}, ...)")
    return train, test


def scan_workers(workers: int) -> int:
    """Data-loading processes for a folder: at most the cores (more only add processes)."""
    return min(int(workers), os.cpu_count() or 1)


__all__ = ["CELEBA_ATTR", "CELEBA_PARTITION", "CSV_NAME", "DEMO_LABELS", "LAYOUT", "LabelTable",
           "Relabel", "demo_label_table", "read_celeba", "read_csv", "scan_multilabel",
           "scan_workers"]
