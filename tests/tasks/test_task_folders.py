"""The folder readers of segmentation and multi-label data, and every bad input: one line, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from cafeslim.errors import DataError
from cafeslim.tasks.multilabel_data import read_celeba, scan_multilabel
from cafeslim.tasks.segmentation_data import MaskFolder, scan_segmentation


def _image(path: Path, size=(12, 10), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    arr[:, : size[0] // 2] = 200
    Image.fromarray(arr).save(path)


def _mask(path: Path, values: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 0, 0)])
    elif mode == "RGB":
        img = img.convert("RGB")
    img.save(path)


def seg_folder(root: Path, n: int = 3, classes: Optional[int] = 3, size=(12, 10)) -> Path:
    """``train/`` and ``val/`` of images and masks with classes 0..2 and an ignored border."""
    for split in ("train", "val"):
        for i in range(n):
            _image(root / split / "images" / f"im{i}.jpg", size)
            m = np.zeros((size[1], size[0]), dtype=np.uint8)
            m[:, : size[0] // 2] = 1 + (i % 2)
            m[0] = 255
            _mask(root / split / "masks" / f"im{i}.png", m)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(["bg", "left", "other"][:classes]) + "\n")
    return root


def ml_folder(root: Path, rows: Optional[Dict[str, str]] = None) -> Path:
    rows = rows or {"a.png": "1,0", "b.png": "0,1", "c.png": "1,1"}
    for split in ("train", "val"):
        for name in rows:
            _image(root / split / name)
        text = "image,smiling,hat\n" + "".join(f"{k},{v}\n" for k, v in rows.items())
        (root / split / "labels.csv").write_text(text)
    return root


def _fresh(root: Path) -> str:
    scan_segmentation.cache_clear()
    scan_multilabel.cache_clear()
    return str(root)


def test_segmentation_folder_pairs_images_and_masks(tmp_path):
    scanned = scan_segmentation(_fresh(seg_folder(tmp_path / "d")))
    assert scanned.classes == ("bg", "left", "other")
    assert len(scanned.train) == len(scanned.test) == 3
    ds = MaskFolder(scanned.train, (3, 8, 8), (0.5,), (0.5,))
    img, mask = ds[1]
    assert img.shape == (3, 8, 8) and mask.shape == (8, 8) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 2, 255}   # nearest resize keeps the indices
    assert int(mask[4, 0]) == 2 and int(mask[4, 7]) == 0


def test_segmentation_classes_from_the_masks_without_classes_txt(tmp_path, monkeypatch, capsys):
    from cafeslim.tasks import segmentation_data

    monkeypatch.setattr(segmentation_data, "SCAN_BAR", 1)   # the progress bar of a big folder
    scanned = scan_segmentation(_fresh(seg_folder(tmp_path / "d", classes=None)))
    assert scanned.classes == ("0", "1", "2")
    assert capsys.readouterr().out == ""   # the bar is on stderr, never on stdout


def test_voc_layout_with_palette_masks_and_its_class_names(tmp_path):
    root = tmp_path / "VOC2012"
    for i, split in enumerate(("train", "val")):
        _image(root / "JPEGImages" / f"2007_{i}.jpg")
        m = np.zeros((10, 12), dtype=np.uint8)
        m[2:5, 2:5] = 15   # person
        m[0] = 255
        _mask(root / "SegmentationClass" / f"2007_{i}.png", m, mode="P")
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(f"2007_{i}\n")
    _image(root / "JPEGImages" / "unlisted.jpg")   # not in a list: not read
    scanned = scan_segmentation(_fresh(root))
    assert len(scanned.classes) == 21 and scanned.classes[15] == "person"
    assert [Path(i).name for i, _ in scanned.train] == ["2007_0.jpg"]
    assert [Path(i).name for i, _ in scanned.test] == ["2007_1.jpg"]
    mask = MaskFolder(scanned.train, (3, 10, 12), (0.5,), (0.5,))[0][1]
    assert int(mask[3, 3]) == 15


def test_multilabel_csv_and_celeba_files(tmp_path):
    train, test = scan_multilabel(_fresh(ml_folder(tmp_path / "d")))
    assert train.names == ("smiling", "hat") and test is not None
    assert train.labels.tolist() == [[1, 0], [0, 1], [1, 1]]
    root = tmp_path / "celeba"
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        _image(root / "img_align_celeba" / name)
    (root / "list_attr_celeba.txt").write_text(
        "3\nSmiling Male\n000001.jpg  1 -1\n000002.jpg -1 -1\n000003.jpg  1  1\n")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    train, test = scan_multilabel(_fresh(root))
    assert train.names == ("Smiling", "Male")
    assert [Path(p).name for p in train.paths] == ["000001.jpg"] and train.labels.tolist() == [[1, 0]]
    assert [Path(p).name for p in test.paths] == ["000003.jpg"] and test.labels.tolist() == [[1, 1]]
    # the attribute file alone, in a split folder
    assert read_celeba(root / "list_attr_celeba.txt", root / "img_align_celeba").labels.shape == (3, 2)


def _bad_segmentation(kind: str, root: Path) -> Path:
    seg_folder(root)
    if kind == "no masks":
        for p in (root / "train" / "masks").iterdir():
            p.unlink()
        (root / "train" / "masks").rmdir()
    elif kind == "a missing mask":
        (root / "train" / "masks" / "im1.png").unlink()
    elif kind == "another size":
        _mask(root / "val" / "masks" / "im2.png", np.zeros((5, 5)))
    elif kind == "a class above the count":
        m = np.zeros((10, 12))
        m[3, 3] = 7
        _mask(root / "train" / "masks" / "im0.png", m)
    elif kind == "an RGB mask":
        _mask(root / "train" / "masks" / "im0.png", np.ones((10, 12)), mode="RGB")
    return root


def _bad_multilabel(kind: str, root: Path) -> Path:
    if kind == "a missing image":
        ml_folder(root)
        (root / "train" / "b.png").unlink()
    elif kind == "a value of 2":
        ml_folder(root, {"a.png": "1,0", "b.png": "2,1"})
    elif kind == "a value of -1":
        ml_folder(root, {"a.png": "1,-1"})
    elif kind == "a short row":
        ml_folder(root, {"a.png": "1"})
    return root


SEG_BAD = {"no masks": "no masks folder", "a missing mask": "have no mask",
           "another size": "must have its image's size", "a class above the count": "holds class 7",
           "an RGB mask": "class indices"}
ML_BAD = {"a missing image": "not in", "a value of 2": "'2'", "a value of -1": "'-1'",
          "a short row": "1 labels"}


@pytest.mark.parametrize("kind", sorted(SEG_BAD))
def test_bad_segmentation_folders_are_one_data_error(tmp_path, kind):
    root = _bad_segmentation(kind, tmp_path / "d")
    with pytest.raises(DataError, match=SEG_BAD[kind]):
        scan_segmentation(_fresh(root))


@pytest.mark.parametrize("kind", sorted(ML_BAD))
def test_bad_multilabel_folders_are_one_data_error(tmp_path, kind):
    root = _bad_multilabel(kind, tmp_path / "d")
    with pytest.raises(DataError, match=ML_BAD[kind]):
        scan_multilabel(_fresh(root))


def _cli(capsys, *args):
    """``cafeslim ARGS`` in this process (the CLI's own error handling): (code, stderr)."""
    from cafeslim.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("task,kind", [("segmentation", "no masks"), ("segmentation", "another size"),
                                       ("segmentation", "a class above the count"),
                                       ("multilabel", "a missing image"), ("multilabel", "a value of 2")])
def test_the_cli_says_one_red_line_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                             task, kind):
    make = _bad_segmentation if task == "segmentation" else _bad_multilabel
    root = make(kind, tmp_path / "data")
    _fresh(root)
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    model = "tv:lraspp_mobilenet_v3_large" if task == "segmentation" else "timm:test_resnet"
    code, err = _cli(capsys, "search", model, "--task", task, "--flops", "50%", "--data", root,
                     "--out", "run")
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert (SEG_BAD if task == "segmentation" else ML_BAD)[kind] in lines[0]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_train_and_eval_refuse_a_bad_folder_before_writing(tmp_path, capsys, monkeypatch):
    root = _bad_segmentation("a class above the count", tmp_path / "data")
    _fresh(root)
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for args in (("train", "tv:lraspp_mobilenet_v3_large", "--task", "segmentation", "--data", root),
                 ("eval", "tv:lraspp_mobilenet_v3_large", "--task", "segmentation", "--data", root)):
        code, err = _cli(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "holds class 7" in err, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
