"""``--data demo-hard``: synthetic composites of the bundled digits, hard enough to rank widths.

The plain demo digits saturate: a uniformly shrunk ``test_resnet`` at 20% FLOPs already gets
99.4% of their test split, so no width search can show an advantage there. ``demo-hard`` is
made from the *same* 1,797 real 8×8 scikit-learn digits, but every image is a **synthetic
composite**: a 32 px canvas on which

* the target digit is placed by a random affine map (scale 1.6–2.6× its 8 px, rotation up to
  ±30°, a shear, a random position),
* one to three *fragments* of other digits (random rectangles of 3–6 px of their 8×8 image,
  placed anywhere at 1–2× with any rotation, 80% as bright) add clutter that looks like
  strokes of a digit,
* a random background level, pixel noise and a random contrast are added.

It is not a natural-image dataset and not a standard benchmark: numbers on it say how methods
compare on a small, cluttered, 10-class problem, nothing about ImageNet.

**Honest split.** The train and test composites come from disjoint *source* digits: the demo's
fixed test digits (:func:`~cafeslim.data.demo.demo_splits`) make the test composites (the
target digit and its clutter fragments alike), the rest the training composites. No source
digit's pixels are in both. D_val is split off the training composites as usual.

Everything is a pure function of the seed (default fixed, like the demo's test split):
``make_hard`` gives bit-identical tensors on every call. :func:`write_folder` writes the same
images as PNG files in ImageNet layout (``train/<class>/``, ``val/<class>/``) so that a run on
``--data DIR`` reproduces a ``--data demo-hard`` one with the ordinary folder loader::

    python -m cafeslim.data.composite --out data/digits-hard

Example:
    >>> hard = make_hard()
    >>> hard.train_images.shape[1:], len(hard.test_labels)
    (torch.Size([1, 32, 32]), 1436)
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .demo import demo_splits, load_digit_images

DEMO_HARD = "demo-hard"
CANVAS = 32
HARD_SEED = 20210504  # fixed: the data must not move with a run's --seed
TRAIN_PER_SOURCE = 2
TEST_PER_SOURCE = 4


@dataclass(frozen=True)
class HardDigits:
    """The composites: ``[N, 1, C, C]`` float32 in [0, 1], labels, and each one's source digit.

    ``*_sources`` index the 1,797 digits of :func:`~cafeslim.data.demo.load_digit_images`
    (the target digit; fragments are drawn from the same split's digits).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    train_sources: np.ndarray
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_sources: np.ndarray


def _placements(rng: np.random.Generator, n: int, scale: Tuple[float, float], rot: float,
                canvas: int, spread: float) -> torch.Tensor:
    """``[n, 2, 3]`` affine_grid matrices: canvas coordinates -> 8×8 source coordinates.

    A source image shown at ``s`` times its 8 px, rotated by θ, sheared and centred at ``t``
    (normalised canvas coordinates) is sampled at ``A⁻¹ (x - t)`` with ``A = s·R·S``.
    """
    s = rng.uniform(*scale, n) * 8.0 / canvas  # its size as a fraction of the canvas
    theta = np.deg2rad(rng.uniform(-rot, rot, n))
    shear = rng.uniform(-0.25, 0.25, n)
    t = rng.uniform(-spread, spread, (n, 2)) * np.maximum(1.0 - s, 0.0)[:, None]
    c, si = np.cos(theta), np.sin(theta)
    # A = s·R·S with S = [[1, shear], [0, 1]]; its inverse in closed form (det = s²).
    a = np.stack([np.stack([c, c * shear - si], -1), np.stack([si, si * shear + c], -1)], -2)
    a *= s[:, None, None]
    inv = np.linalg.inv(a)
    mats = np.concatenate([inv, -(inv @ t[:, :, None])], axis=2)
    return torch.from_numpy(mats).float()


def _place(images: torch.Tensor, mats: torch.Tensor, canvas: int) -> torch.Tensor:
    grid = F.affine_grid(mats, [len(images), 1, canvas, canvas], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _fragments(digits: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A random 3-6 px rectangle of each 8×8 digit (the rest zeroed)."""
    n = len(digits)
    h, w = rng.integers(3, 7, n), rng.integers(3, 7, n)
    y0, x0 = rng.integers(0, 9 - h), rng.integers(0, 9 - w)
    r = np.arange(8)
    rows = (r[None] >= y0[:, None]) & (r[None] < (y0 + h)[:, None])
    cols = (r[None] >= x0[:, None]) & (r[None] < (x0 + w)[:, None])
    mask = torch.from_numpy(rows[:, :, None] & cols[:, None, :]).float()
    return digits * mask[:, None]


def compose(digits: torch.Tensor, pool: Sequence[int], targets: Sequence[int],
            rng: np.random.Generator, canvas: int = CANVAS) -> torch.Tensor:
    """Composites of ``digits[targets]`` with clutter from fragments of ``digits[pool]``.

    Args:
        digits: ``[N, 1, 8, 8]`` in [0, 1].
        pool: indices the clutter fragments may come from (the same split's digits).
        targets: the digit each composite shows (its label is that digit's).
        rng: all randomness comes from here.
        canvas: output size in pixels.

    Returns:
        ``[len(targets), 1, canvas, canvas]`` float32 in [0, 1].

    Example:
        >>> x, _ = load_digit_images()
        >>> compose(x, range(100), [0, 1], np.random.default_rng(0)).shape
        torch.Size([2, 1, 32, 32])
    """
    targets, pool = np.asarray(targets), np.asarray(pool)
    n = len(targets)
    ink = _place(digits[targets], _placements(rng, n, (1.6, 2.6), 30.0, canvas, 0.9), canvas)
    clutter = torch.zeros_like(ink)
    counts = rng.integers(1, 4, n)
    for j in range(int(counts.max())):
        src = rng.choice(pool, n)
        layer = _place(_fragments(digits[src], rng),
                       _placements(rng, n, (1.0, 2.0), 180.0, canvas, 1.0), canvas)
        keep = torch.from_numpy(counts > j).float().view(n, 1, 1, 1)
        clutter = torch.maximum(clutter, layer * keep * 0.8)
    img = torch.maximum(ink, clutter)
    contrast = torch.from_numpy(rng.uniform(0.6, 1.0, n)).float().view(n, 1, 1, 1)
    background = torch.from_numpy(rng.uniform(0.0, 0.25, n)).float().view(n, 1, 1, 1)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    noise = torch.randn(img.shape, generator=gen) * 0.1
    return (background + (1 - background) * img * contrast + noise).clamp(0.0, 1.0)


@functools.lru_cache(maxsize=2)
def make_hard(seed: int = HARD_SEED, canvas: int = CANVAS, train_per_source: int = TRAIN_PER_SOURCE,
              test_per_source: int = TEST_PER_SOURCE) -> HardDigits:
    """The ``demo-hard`` composites, split by source digit (cached: tensors are read-only).

    Args:
        seed: the data's seed (the default is what ``--data demo-hard`` uses).
        canvas: image size in pixels.
        train_per_source, test_per_source: composites made of every source digit.

    Example:
        >>> h = make_hard()
        >>> set(h.train_sources) & set(h.test_sources)
        set()
    """
    digits, labels = load_digit_images()
    splits = demo_splits(labels.numpy())
    parts = []
    for i, (idx, per) in enumerate(((splits.train, train_per_source), (splits.test, test_per_source))):
        rng = np.random.default_rng([seed, i])
        sources = np.repeat(idx, per)
        parts.append((compose(digits, idx, sources, rng, canvas), labels[sources].clone(), sources))
    (tr_x, tr_y, tr_s), (te_x, te_y, te_s) = parts
    return HardDigits(tr_x, tr_y, tr_s, te_x, te_y, te_s)


def write_folder(out: Union[str, Path], hard: Optional[HardDigits] = None) -> Path:
    """Write the composites as 8-bit grey PNGs in ImageNet layout (``train/``, ``val/``).

    ``val/`` holds the test composites (the folder loader's test split). Fails if ``out``
    already holds a ``train`` or ``val`` folder, so nothing is overwritten.

    Raises:
        OutputExistsError: ``out/train`` or ``out/val`` exists.

    Example:
        >>> write_folder("data/digits-hard")                               # doctest: +SKIP
        PosixPath('data/digits-hard')
    """
    from PIL import Image

    from ..errors import OutputExistsError

    out = Path(out)
    for split in ("train", "val"):
        if (out / split).exists():
            raise OutputExistsError(f"{out / split} exists; pick another --out")
    hard = hard if hard is not None else make_hard()
    for split, images, labels in (("train", hard.train_images, hard.train_labels),
                                  ("val", hard.test_images, hard.test_labels)):
        pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
        for c in range(10):
            (out / split / str(c)).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(pixels, labels.tolist())):
            Image.fromarray(img, mode="L").save(out / split / str(label) / f"{i:05d}.png")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m cafeslim.data.composite --out DIR``: write ``demo-hard`` as a folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (train/, val/)")
    args = parser.parse_args(argv)
    path = write_folder(args.out)
    h = make_hard()
    print(f"wrote {len(h.train_labels)} training and {len(h.test_labels)} test composites "
          f"to {path}/train and {path}/val")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["CANVAS", "DEMO_HARD", "HardDigits", "compose", "main", "make_hard", "write_folder"]
