"""ImageNet-layout folders: scanning, layout errors (one line each), unreadable images skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cafeslim.data.folders import ImageFolder, scan_imagenet
from cafeslim.errors import DataError


def _img(path: Path, seed: int, size: int = 24) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 4, val: bool = True) -> Path:
    for split in ("train", "val") if val else ("train",):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                _img(d / f"{i:03d}.jpg", seed=hash((split, c, i)) % 2**31)
    return root


def _one_line_error(fn, *args) -> str:
    with pytest.raises(DataError) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_scan_lists_classes_and_files_sorted(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()
    train, val = scan_imagenet(root)
    assert train.classes == ("cat", "dog")
    assert len(train.samples) == 8 and [s[1] for s in train.samples] == [0] * 4 + [1] * 4
    assert all(p.endswith(".jpg") for p, _ in train.samples)
    assert val is not None and val.classes == train.classes and len(val.samples) == 4


def test_val_folder_is_optional(tmp_path):
    train, val = scan_imagenet(make_folder(tmp_path / "ds", val=False))
    assert val is None and len(train.samples) == 8


def test_missing_folder(tmp_path):
    assert "does not exist" in _one_line_error(scan_imagenet, tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "is empty" in _one_line_error(scan_imagenet, tmp_path / "empty")


def test_folder_without_train(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    assert "has no train/ folder" in _one_line_error(scan_imagenet, tmp_path / "ds")


def test_train_without_class_folders(tmp_path):
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "train" / "a.jpg").write_bytes(b"x")
    assert "holds no class folders" in _one_line_error(scan_imagenet, tmp_path / "ds")


def test_class_folder_without_images(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "readme.txt").write_text("no images here")
    msg = _one_line_error(scan_imagenet, root)
    assert "class folder" in msg and "emu" in msg and "holds no images" in msg


def test_val_classes_must_match_train(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "val" / "dog").rename(root / "val" / "wolf")
    msg = _one_line_error(scan_imagenet, root)
    assert "do not match train/" in msg and "dog" in msg and "wolf" in msg


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "ds")
    cat = root / "train" / "cat"
    (cat / "000.jpg").write_bytes(b"definitely not a jpeg")
    data = (cat / "001.jpg").read_bytes()
    (cat / "001.jpg").write_bytes(data[: len(data) // 2])  # truncated
    train, _ = scan_imagenet(root)
    ds = ImageFolder(train.samples, transform=None)
    img, label = ds[0]  # both bad files are skipped: the third cat image comes back
    assert label == 0 and img.size == (24, 24)
    assert ds.bad == 2
    labels = [ds[i][1] for i in range(len(ds))]
    assert labels == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ds.bad == 2 + 2 + 1  # index 0 meets both bad files again, index 1 the second
