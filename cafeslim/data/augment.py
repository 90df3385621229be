"""Augmentation for small or non-photographic images: a padded random crop (a small shift).

ImageNet's recipe (RandomResizedCrop from 8% of the area, flips, colour jitter) destroys images
of a few dozen pixels: measured on 64 px digits on a cluttered canvas, 6 epochs with it left the
loss at chance, while a 1-pixel shift trained the same network to 78.6% test top-1
(issue 8). :class:`PadCrop` shifts a normalised image tensor by up to ``pad`` pixels in each
direction (the border replicated, so no artificial frame appears) and is applied on top of the
evaluation transforms. The shift is drawn from the sample's own seed
(:class:`~cafeslim.data.loaders.ResumableSampler`), so the augmentation of a sample is a pure
function of (seed, epoch, index): exact resume keeps working.

Example:
    >>> resolve_aug("auto", "demo", 64)
    'shift'
    >>> resolve_aug("auto", "/data/imagenet", 224)
    'timm'
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .folders import split_key

_BUILTIN = ("demo", "demo-hard")  # the in-memory digits (cafeslim.data.loaders.BUILTIN)
SMALL_IMAGE = 64  # at most this many pixels a side: the padded crop is the default


def resolve_aug(aug: Optional[str], source: str, size: int) -> str:
    """The augmentation an ``aug`` setting means for a data source at an input size.

    ``None`` (a settings object without the field, e.g. the supernet's): none for the
    built-in digits (unaugmented, as they always were), the padded crop for folders of small
    images and timm's for the others. Folders of small images used to get timm's too, and a
    supernet then did not learn: on ``demo-hard`` written as a folder (32 px), 3 epochs of
    the default ``search`` left the loss at chance (docs/search_quality.md).

    Example:
        >>> resolve_aug(None, "demo", 64), resolve_aug(None, "DIR", 32), resolve_aug(None, "DIR", 224)
        ('none', 'shift', 'timm')
    """
    if aug is None:
        if source in _BUILTIN:
            return "none"
        return "shift" if size <= SMALL_IMAGE else "timm"
    if aug != "auto":
        return aug
    return "shift" if source in _BUILTIN or size <= SMALL_IMAGE else "timm"


def default_shift(size: int) -> int:
    """The padded crop's largest shift for an input size: size / 32, at least 1 pixel.

    Example:
        >>> default_shift(64), default_shift(16)
        (2, 1)
    """
    return max(1, int(size) // 32)


class PadCrop(Dataset):
    """Wraps a dataset of ``(tensor [C, H, W], label)`` and shifts each image at random.

    Args:
        dataset: yields normalised tensors; indexed with ``(index, seed)`` keys.
        pad: largest shift in pixels (0 returns the images unchanged).

    Example:
        >>> from cafeslim.data.demo import DigitsDataset, load_digit_images
        >>> ds = PadCrop(DigitsDataset(*load_digit_images(), (3, 32, 32), (0.5,), (0.5,)), pad=1)
        >>> ds[(0, 7)][0].shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, dataset: Any, pad: int):
        self.dataset, self.pad = dataset, int(pad)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, int]:
        index, seed = split_key(key)
        img, label = self.dataset[key]
        if self.pad <= 0 or seed is None:
            return img, label
        dy, dx = np.random.default_rng(seed).integers(0, 2 * self.pad + 1, size=2)
        h, w = img.shape[-2:]
        padded = F.pad(img.unsqueeze(0), (self.pad,) * 4, mode="replicate")[0]
        return padded[..., int(dy):int(dy) + h, int(dx):int(dx) + w].contiguous(), label


__all__ = ["PadCrop", "SMALL_IMAGE", "default_shift", "resolve_aug"]
