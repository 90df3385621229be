"""Augmentation for small or non-photographic images: a padded random crop (a small shift).

ImageNet's recipe (RandomResizedCrop from 8% of the area, flips, colour jitter) destroys images
of a few dozen pixels: measured on 64 px digits on a cluttered canvas, 6 epochs with it left the
loss at chance, while a 1-pixel shift trained the same network to 78.6% test top-1
(issue 8). :class:`PadCrop` shifts a normalised image tensor by up to ``pad`` pixels in each
direction (the border replicated, so no artificial frame appears) and is applied on top of the
evaluation transforms. The shift is drawn from the sample's own seed
(:class:`~cafeslim.data.loaders.ResumableSampler`), so the augmentation of a sample is a pure
function of (seed, epoch, index): exact resume keeps working.

``--aug timm`` on the demo (whose samples are tensors, not PIL images) runs timm's training
transform on each digit turned back into an image (:class:`TimmOnTensors`), under the sample's
seed as well.

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

from .folders import seeded, split_key

_BUILTIN = ("demo", "demo-hard")  # the in-memory digits (cafeslim.data.loaders.BUILTIN)
SMALL_IMAGE = 64  # at most this many pixels a side: the padded crop is the default


def resolve_aug(aug: Optional[str], source: str, size: int, wants_timm: bool = False) -> str:
    """The augmentation an ``aug`` setting means for a data source at an input size.

    ``None`` (a settings object without the field) keeps the historical behaviour: none for
    the built-in digits, timm's for folders. ``auto`` is ``timm`` when a timm-only setting was given
    (``wants_timm``: ``--scale``, ``--ratio``, ``--aa``, ``--reprob``), else ``shift`` for the
    built-in digits and images of at most :data:`SMALL_IMAGE` px, else ``timm``.

    Example:
        >>> resolve_aug(None, "demo", 64), resolve_aug("auto", "DIR", 32)
        ('none', 'shift')
        >>> resolve_aug("auto", "demo", 64, wants_timm=True)
        'timm'
    """
    if aug is None:
        return "none" if source in _BUILTIN else "timm"
    if aug != "auto":
        return aug
    if wants_timm:
        return "timm"
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
        pad: largest shift in pixels (0 and no flip returns the images unchanged).
        hflip: probability of a horizontal flip (0: never; digits must not be mirrored).

    Example:
        >>> from cafeslim.data.demo import DigitsDataset, load_digit_images
        >>> ds = PadCrop(DigitsDataset(*load_digit_images(), (3, 32, 32), (0.5,), (0.5,)), pad=1)
        >>> ds[(0, 7)][0].shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, dataset: Any, pad: int, hflip: float = 0.0):
        self.dataset, self.pad, self.hflip = dataset, int(pad), float(hflip)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, int]:
        index, seed = split_key(key)
        img, label = self.dataset[key]
        if (self.pad <= 0 and self.hflip <= 0) or seed is None:
            return img, label
        rng = np.random.default_rng(seed)
        dy, dx = rng.integers(0, 2 * self.pad + 1, size=2)
        if self.pad > 0:
            h, w = img.shape[-2:]
            padded = F.pad(img.unsqueeze(0), (self.pad,) * 4, mode="replicate")[0]
            img = padded[..., int(dy):int(dy) + h, int(dx):int(dx) + w].contiguous()
        # Drawn after the shift, so that hflip = 0 keeps the shifts of earlier versions.
        if self.hflip > 0 and rng.random() < self.hflip:
            img = img.flip(-1)
        return img, label


class TimmOnTensors(Dataset):
    """timm's training transform on a dataset of normalised tensors (the demo digits).

    Each image is un-normalised, turned into a PIL image and given to ``transform`` (which
    normalises again) under the sample's seed, so the augmentation stays a pure function of
    (seed, epoch, index).

    Example:
        >>> from cafeslim.data.demo import DigitsDataset, load_digit_images
        >>> from timm.data import create_transform
        >>> base = DigitsDataset(*load_digit_images(), (3, 32, 32), (0.5,) * 3, (0.5,) * 3)
        >>> ds = TimmOnTensors(base, create_transform(32, is_training=True), (0.5,) * 3, (0.5,) * 3)
        >>> ds[(0, 7)][0].shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, dataset: Any, transform: Any, mean: Any, std: Any):
        self.dataset, self.transform = dataset, transform
        self.mean = torch.tensor([float(v) for v in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, int]:
        from torchvision.transforms.functional import to_pil_image

        _, seed = split_key(key)
        img, label = self.dataset[key]
        pil = to_pil_image((img * self.std + self.mean).clamp(0, 1))
        with seeded(seed):
            return self.transform(pil), label


__all__ = ["PadCrop", "SMALL_IMAGE", "TimmOnTensors", "default_shift", "resolve_aug"]
