"""Segmentation data: the digits-on-a-canvas demo and image + mask folders (Pascal VOC too).

**Demo** (``--data demo --task segmentation``): the scikit-learn digits placed on a 64×64
black canvas, :data:`DIGITS_PER_CANVAS` per canvas, each scaled to 20-32 px and put where it
overlaps no other; every stroke pixel (upsampled intensity above :data:`STROKE`) is labelled
with its digit + 1, the background 0 — 11 classes. The canvases are a fixed function of the
digits (their own seed, not the run's): the training canvases use the demo's training digits
(each on :data:`TRAIN_USES` canvases at different places), the test canvases the demo's fixed
held-out digits (each once), so the test split shares no digit with training.

**Folders** (``--data DIR``), one of two layouts, with masks as PNGs of class indices (8-bit
grey or palette, as VOC's are) and 255 ignored:

* ``DIR/train/images/NAME.jpg`` + ``DIR/train/masks/NAME.png`` (same stem), and optionally
  ``DIR/val/images`` + ``DIR/val/masks``: the test split;
* Pascal VOC's: ``DIR/JPEGImages/NAME.jpg``, ``DIR/SegmentationClass/NAME.png`` and
  ``DIR/ImageSets/Segmentation/{train,val}.txt`` (``val`` is the test split).

Class names come from ``DIR/classes.txt`` (one per line, line i is class i, the background
first), else VOC's 21 for the VOC layout, else ``0 … C-1`` with C one more than the largest
class index of the training masks. Every mask is read once when the folder is scanned:
a missing mask, a mask of another size than its image, a colour (RGB) mask or a class index
at or above the class count (other than 255) is a one-line :class:`~cafeslim.errors.DataError`
before anything runs. Images and masks are resized to the model's square input size
(bilinear and nearest).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from ..data.folders import IMG_EXTENSIONS, ImageFolder, seeded, split_key

IGNORE_INDEX = 255
DEMO_CANVAS = 64
DIGITS_PER_CANVAS = 2
TRAIN_USES = 2
STROKE = 0.3
DIGIT_SIZES = (20, 32)
SCAN_BAR = 200  # masks: a folder with this many gets a progress bar while it is checked
_DEMO_SEED = 20240611  # fixed: the canvases must not move with --seed
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
DEMO_SEG_CLASSES = ("background",) + tuple(f"digit {i}" for i in range(10))
LAYOUT = ("DIR/train/images/NAME.jpg + DIR/train/masks/NAME.png (optional val/ alike), or "
          "VOC's JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt")


@dataclass(frozen=True)
class Canvases:
    """Demo canvases: ``images`` ``[N, 1, S, S]`` in [0, 1] and ``masks`` ``[N, S, S]`` uint8."""

    images: torch.Tensor
    masks: torch.Tensor


def _place(rng: np.random.Generator, sizes: Sequence[int], canvas: int) -> List[Tuple[int, int]]:
    """Top-left corners of boxes of ``sizes`` that do not overlap (rejection sampling)."""
    boxes: List[Tuple[int, int, int]] = []
    for s in sizes:
        for _ in range(100):
            y, x = (int(v) for v in rng.integers(0, canvas - s + 1, size=2))
            if all(y + s <= by or by + bs <= y or x + s <= bx or bx + bs <= x for by, bx, bs in boxes):
                break
        boxes.append((y, x, s))  # after 100 misses it may touch another: never seen at 64 px
    return [(y, x) for y, x, _ in boxes]


def digit_canvases(images: torch.Tensor, labels: torch.Tensor, uses: int,
                   rng: np.random.Generator, canvas: int = DEMO_CANVAS) -> Canvases:
    """Place digits on canvases: each digit ``uses`` times, :data:`DIGITS_PER_CANVAS` a canvas.

    Example:
        >>> from cafeslim.data.demo import load_digit_images
        >>> x, y = load_digit_images()
        >>> c = digit_canvases(x[:4], y[:4], 1, np.random.default_rng(0))
        >>> c.images.shape, int(c.masks.max()) <= 10
        (torch.Size([2, 1, 64, 64]), True)
    """
    order = np.concatenate([rng.permutation(len(labels)) for _ in range(uses)])
    n = -(-len(order) // DIGITS_PER_CANVAS)
    out_x = torch.zeros(n, 1, canvas, canvas)
    out_m = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    for c in range(n):
        idx = order[c * DIGITS_PER_CANVAS:(c + 1) * DIGITS_PER_CANVAS]
        sizes = [int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1)) for _ in idx]
        for i, s, (y, x) in zip(idx, sizes, _place(rng, sizes, canvas)):
            digit = F.interpolate(images[int(i)][None], size=(s, s), mode="bilinear",
                                  align_corners=False)[0, 0].clamp(0, 1)
            region = out_x[c, 0, y:y + s, x:x + s]
            torch.maximum(region, digit, out=region)
            out_m[c, y:y + s, x:x + s][digit > STROKE] = int(labels[int(i)]) + 1
    return Canvases(out_x, out_m)


@functools.lru_cache(maxsize=1)
def demo_canvases() -> Tuple[Canvases, Canvases]:
    """The demo's ``(training canvases, test canvases)``: fixed, from disjoint digits.

    Example:
        >>> train, test = demo_canvases()
        >>> len(train.images), len(test.images)
        (1438, 180)
    """
    from ..data.demo import demo_splits, load_digit_images

    images, labels = load_digit_images()
    splits = demo_splits(labels.numpy())
    rng = np.random.default_rng(_DEMO_SEED)
    train = digit_canvases(images[splits.train], labels[splits.train], TRAIN_USES, rng)
    test = digit_canvases(images[splits.test], labels[splits.test], 1, rng)
    return train, test


class MaskedTensors(Dataset):
    """Canvases as normalised ``([C, H, W] image, [H, W] int64 mask)`` at a model's input size.

    Example:
        >>> train, _ = demo_canvases()
        >>> img, mask = MaskedTensors(train, (3, 32, 32), (0.5,), (0.5,))[0]
        >>> img.shape, mask.shape, mask.dtype
        (torch.Size([3, 32, 32]), torch.Size([32, 32]), torch.int64)
    """

    def __init__(self, canvases: Canvases, input_size: Sequence[int], mean: Sequence[float],
                 std: Sequence[float]):
        from ..data.demo import _per_channel

        c, h, w = (int(v) for v in input_size)
        self.canvases, self.size, self.channels = canvases, (h, w), c
        self.mean, self.std = _per_channel(mean, c), _per_channel(std, c)

    def __len__(self) -> int:
        return len(self.canvases.images)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        index, _ = split_key(key)
        img = self.canvases.images[index:index + 1]
        mask = self.canvases.masks[index:index + 1, None].float()
        if tuple(img.shape[-2:]) != self.size:
            img = F.interpolate(img, size=self.size, mode="bilinear", align_corners=False)
            mask = F.interpolate(mask, size=self.size, mode="nearest")
        img = img[0].expand(self.channels, -1, -1)
        return (img - self.mean) / self.std, mask[0, 0].long()


class JointShift(Dataset):
    """A padded random crop (and optional flip) applied alike to an image and its mask.

    The segmentation form of :class:`cafeslim.data.augment.PadCrop`: both are padded by
    replicating their border and cut at the same offset, drawn from the sample's own seed (so
    exact resume keeps working).

    Example:
        >>> train, _ = demo_canvases()
        >>> ds = JointShift(MaskedTensors(train, (1, 64, 64), (0.5,), (0.5,)), pad=2)
        >>> [t.shape for t in ds[(0, 7)]]
        [torch.Size([1, 64, 64]), torch.Size([64, 64])]
    """

    def __init__(self, dataset: Any, pad: int, hflip: float = 0.0):
        self.dataset, self.pad, self.hflip = dataset, int(pad), float(hflip)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        _, seed = split_key(key)
        img, mask = self.dataset[key]
        if (self.pad <= 0 and self.hflip <= 0) or seed is None:
            return img, mask
        rng = np.random.default_rng(seed)
        dy, dx = (int(v) for v in rng.integers(0, 2 * self.pad + 1, size=2))
        if self.pad > 0:
            h, w = img.shape[-2:]
            both = torch.cat([img, mask[None].to(img.dtype)])
            both = F.pad(both[None], (self.pad,) * 4, mode="replicate")[0]
            both = both[..., dy:dy + h, dx:dx + w]
            img, mask = both[:-1].contiguous(), both[-1].round().long()
        if self.hflip > 0 and rng.random() < self.hflip:
            img, mask = img.flip(-1), mask.flip(-1)
        return img, mask


# ------------------------------------------------------------------------------- folders

@dataclass(frozen=True)
class SegFolder:
    """A scanned segmentation folder: classes and ``(image, mask)`` paths per split."""

    classes: Tuple[str, ...]
    train: Tuple[Tuple[str, str], ...]
    test: Optional[Tuple[Tuple[str, str], ...]]


def _pairs(images: Path, masks: Path, names: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """``(image, mask)`` paths of an images/ and a masks/ folder (or of listed stems)."""
    if not images.is_dir():
        raise DataError(f"segmentation data: {images} does not exist (expected {LAYOUT})")
    if not masks.is_dir():
        raise DataError(f"segmentation data: {images} has no masks folder {masks}")
    found = {}
    with os.scandir(images) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if not e.name.startswith(".") and ext.lower() in IMG_EXTENSIONS and e.is_file():
                found[stem] = e.path
    stems = sorted(found) if names is None else list(names)
    missing_images = [s for s in stems if s not in found]
    if missing_images:
        raise DataError(f"{len(missing_images)} listed image(s) are not in {images} "
                        f"(e.g. {missing_images[0]})")
    if not stems:
        raise DataError(f"segmentation data: {images} holds no images")
    pairs = [(found[s], str(masks / f"{s}.png")) for s in stems]
    missing = [i for i, m in pairs if not os.path.isfile(m)]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {images} have no mask in {masks} "
                        f"(e.g. {Path(missing[0]).stem}.png)")
    return pairs


def _mask_values(image: str, mask: str) -> np.ndarray:
    """The class indices of one mask, after checking its mode and size against its image."""
    from PIL import Image

    try:
        with Image.open(mask) as m:
            if m.mode not in ("L", "P"):
                raise DataError(f"mask {mask} is {m.mode}: masks must be PNGs of class indices "
                                "(8-bit grey or palette)")
            values = np.unique(np.asarray(m))
            msize = m.size
        with Image.open(image) as im:
            isize = im.size
    except OSError as exc:
        raise DataError(f"cannot read {mask} or its image: {exc}") from None
    if msize != isize:
        raise DataError(f"mask {mask} is {msize[0]}×{msize[1]}, its image {image} "
                        f"{isize[0]}×{isize[1]}: a mask must have its image's size")
    return values


def _checked(pairs: Sequence[Tuple[str, str]], what: str) -> Any:
    """``pairs``, with a progress bar on stderr for a folder that takes a while to read."""
    if len(pairs) < SCAN_BAR or os.environ.get("RANK", "0") != "0":
        return pairs
    from rich.console import Console
    from rich.progress import track

    return track(pairs, description=f"checking {what} masks", console=Console(stderr=True),
                 transient=True)


def _check_masks(pairs: Sequence[Tuple[str, str]], classes: Optional[int], what: str = "") -> int:
    """Read every mask: the class count (given, or one more than the largest index)."""
    top = -1
    for image, mask in _checked(pairs, what):
        values = _mask_values(image, mask)
        values = values[values != IGNORE_INDEX]
        if values.size:
            top = max(top, int(values.max()))
            if classes is not None and int(values.max()) >= classes:
                raise DataError(f"mask {mask} holds class {int(values.max())}, but there are "
                                f"{classes} classes (0-{classes - 1}; {IGNORE_INDEX} is ignored)")
    return classes if classes is not None else top + 1


def _names(root: Path) -> Optional[Tuple[str, ...]]:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise DataError(f"{path} lists no class")
    return names


def _voc_list(root: Path, split: str) -> Optional[List[str]]:
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        return None
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@functools.lru_cache(maxsize=4)
def scan_segmentation(root: str) -> SegFolder:
    """Scan and validate a segmentation folder (module docstring); cached per folder.

    Raises:
        DataError: no known layout, a missing mask, a mask of another size or mode, a class
            index at or above the class count.

    Example:
        >>> scan_segmentation("/data/VOC2012").classes[:2]               # doctest: +SKIP
        ('background', 'aeroplane')
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data folder {base} does not exist")
    names = _names(base)
    if (base / "train").is_dir():
        train = _pairs(base / "train" / "images", base / "train" / "masks")
        val = base / "val"
        test = _pairs(val / "images", val / "masks") if val.is_dir() else None
    elif (base / "JPEGImages").is_dir() and (base / "SegmentationClass").is_dir():
        listed = _voc_list(base, "train")
        if listed is None:
            raise DataError(f"{base} has VOC's folders but no ImageSets/Segmentation/train.txt")
        train = _pairs(base / "JPEGImages", base / "SegmentationClass", listed)
        val_list = _voc_list(base, "val")
        test = _pairs(base / "JPEGImages", base / "SegmentationClass", val_list) if val_list else None
        names = names or VOC_CLASSES
    else:
        raise DataError(f"segmentation data folder {base} has neither layout: {LAYOUT}")
    count = _check_masks(train, len(names) if names else None, "training")
    if test:
        _check_masks(test, count, "test")
    if count < 2:
        raise DataError(f"the masks of {base} hold fewer than two classes")
    classes = names or tuple(str(i) for i in range(count))
    return SegFolder(tuple(classes), tuple(train), tuple(test) if test else None)


class MaskFolder(ImageFolder):
    """Decoded ``(image, mask)`` file pairs at a model's input size, normalised.

    Unreadable pairs are skipped and counted as :class:`~cafeslim.data.folders.ImageFolder`
    does.

    Example:
        >>> ds = MaskFolder(scan_segmentation("voc").train, (3, 224, 224), mean, std)  # doctest: +SKIP
        >>> ds[0][1].shape                                                          # doctest: +SKIP
        torch.Size([224, 224])
    """

    def __init__(self, pairs: Sequence[Tuple[str, str]], input_size: Sequence[int],
                 mean: Sequence[float], std: Sequence[float], bad_counter: Any = None):
        from ..data.demo import _per_channel

        super().__init__(list(pairs), None, bad_counter)
        c, h, w = (int(v) for v in input_size)
        self.size, self.channels = (h, w), c
        self.mean, self.std = _per_channel(mean, c), _per_channel(std, c)

    def _pair(self, image: str, mask: str) -> Tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        img = self._load(image).resize(self.size[::-1], Image.BILINEAR)
        with Image.open(mask) as m:
            target = np.array(m.resize(self.size[::-1], Image.NEAREST), dtype=np.int64)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.channels != 3:  # a grey (or many-channel) model: the image's brightness
            x = x.mean(0, keepdim=True).expand(self.channels, -1, -1)
        return (x - self.mean) / self.std, torch.from_numpy(target)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        index, seed = split_key(key)
        n = len(self.samples)
        for attempt in range(min(n, 64)):
            image, mask = self.samples[(index + attempt) % n]
            try:
                with seeded(seed):
                    return self._pair(image, mask)
            except Exception:  # noqa: BLE001 - any decoder failure means "skip this pair"
                with self._bad.get_lock():
                    self._bad.value += 1
        raise DataError(f"64 unreadable images or masks in a row near {self.samples[index][0]}")


__all__ = ["Canvases", "DEMO_CANVAS", "DEMO_SEG_CLASSES", "IGNORE_INDEX", "JointShift", "LAYOUT",
           "MaskFolder", "MaskedTensors", "SegFolder", "VOC_CLASSES", "demo_canvases",
           "digit_canvases", "scan_segmentation"]
