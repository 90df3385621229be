"""``--data demo``: a tiny real dataset that needs no download.

scikit-learn ships the UCI handwritten digits inside the package (``load_digits``: 1797
grey 8×8 images, 10 classes). They are turned into 3-channel images of the model's input size,
normalised with the model's mean and std, so that any model runs end to end — training,
search, evaluation — on a fresh machine in minutes.

The 8×8 images are stored once as a small tensor; each sample is upsampled on access
(bilinear, a few microseconds). Storing the upsampled images instead would take over 1 GB at
224 px. There is no random augmentation: demo batches are a pure function of their indices.

The held-out test split (20%, for final evaluation) is fixed forever — independent of the
run's seed — so that accuracies of different runs are comparable; D_val is split off the
remaining training part by the run's seed (:mod:`.loaders`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .folders import split_key

DEMO_CLASSES = tuple(str(i) for i in range(10))
TEST_FRACTION = 0.2
_SPLIT_SEED = 20210503  # fixed: the test split must not move with --seed


@dataclass(frozen=True)
class DemoSplits:
    """Index arrays into the digits: ``train`` (D_tr + D_val) and the held-out ``test``."""

    train: np.ndarray
    test: np.ndarray


def load_digit_images() -> Tuple[torch.Tensor, torch.Tensor]:
    """All digits as ``([N, 1, 8, 8] float32 in [0, 1], [N] int64 labels)``.

    Reads the CSV that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``) directly:
    importing ``sklearn.datasets`` costs seconds, the file 70 ms. Falls back to
    ``load_digits`` if the file ever moves.

    Example:
        >>> x, y = load_digit_images(); x.shape, int(y.max())
        (torch.Size([1797, 1, 8, 8]), 9)
    """
    table = _digits_csv()
    if table is not None:
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, target = digits.images, digits.target
    images = torch.from_numpy(pixels.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(target.astype(np.int64))
    return images.contiguous(), labels


def _digits_csv() -> Optional[np.ndarray]:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            try:
                table = np.loadtxt(path, delimiter=",")
            except (OSError, ValueError):
                return None
            if table.ndim == 2 and table.shape[1] == 65:
                return table
    return None


def demo_splits(labels: Sequence[int]) -> DemoSplits:
    """The fixed, class-stratified train/test split of the digits.

    Example:
        >>> s = demo_splits(load_digit_images()[1]); len(s.train) + len(s.test)
        1797
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(TEST_FRACTION * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return DemoSplits(train=np.sort(np.concatenate(train)), test=np.sort(np.concatenate(test)))


class DigitsDataset(Dataset):
    """Digits as normalised ``[C, H, W]`` tensors of a model's input size.

    Args:
        images: ``[N, 1, 8, 8]`` in [0, 1] (from :func:`load_digit_images`).
        labels: ``[N]``.
        input_size: the model's ``(C, H, W)``.
        mean, std: the model's normalisation, one value per channel.

    Example:
        >>> x, y = load_digit_images()
        >>> ds = DigitsDataset(x, y, (3, 64, 64), (0.5,) * 3, (0.5,) * 3)
        >>> ds[0][0].shape
        torch.Size([3, 64, 64])
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, input_size: Sequence[int],
                 mean: Sequence[float], std: Sequence[float]):
        c, h, w = (int(v) for v in input_size)
        self.images, self.labels = images, labels
        self.size = (h, w)
        self.channels = c
        # Broadcast 1-value stats to every channel (some models declare grey mean/std).
        self.mean = _per_channel(mean, c)
        self.std = _per_channel(std, c)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, int]:
        index, _ = split_key(key)  # no augmentation: the sample seed is not needed
        img = F.interpolate(self.images[index:index + 1], size=self.size, mode="bilinear",
                            align_corners=False)[0]
        img = img.expand(self.channels, -1, -1)
        return (img - self.mean) / self.std, int(self.labels[index])


def _per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        t = t[:1].expand(channels)  # a mismatched config: fall back to the first value
    return t.reshape(channels, 1, 1).clone()
