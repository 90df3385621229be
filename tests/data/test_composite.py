"""``demo-hard``: synthetic composites of the bundled digits (shapes, determinism, honest split)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cafeslim.config import TrainConfig
from cafeslim.data import build_data, dataset_classes
from cafeslim.data.composite import CANVAS, compose, main, make_hard, write_folder
from cafeslim.data.demo import demo_splits, load_digit_images
from cafeslim.errors import OutputExistsError
from cafeslim.models import ModelInfo


def _info(size: int) -> ModelInfo:
    cfg = {"input_size": (3, size, size), "interpolation": "bilinear", "mean": (0.5,) * 3,
           "std": (0.5,) * 3, "crop_pct": 1.0, "crop_mode": "center"}
    return ModelInfo(model=torch.nn.Identity(), name="dummy", input_size=(3, size, size),
                     data_config=cfg)


def test_shapes_range_and_labels():
    h = make_hard()
    digits, labels = load_digit_images()
    s = demo_splits(labels.numpy())
    assert h.train_images.shape == (2 * len(s.train), 1, CANVAS, CANVAS)
    assert h.test_images.shape == (4 * len(s.test), 1, CANVAS, CANVAS)
    assert h.train_images.dtype == torch.float32
    assert float(h.train_images.min()) >= 0.0 and float(h.train_images.max()) <= 1.0
    # Every composite carries its source digit's label; all classes are present in both splits.
    assert torch.equal(h.train_labels, labels[h.train_sources])
    assert torch.equal(h.test_labels, labels[h.test_sources])
    assert set(h.test_labels.tolist()) == set(range(10))
    # Not trivially blank or constant: real ink and real noise on every canvas.
    per_image_std = h.train_images.flatten(1).std(dim=1)
    assert float(per_image_std.min()) > 0.05


def test_deterministic_and_seeded():
    digits, _ = load_digit_images()
    a = compose(digits, range(50), [1, 2, 3], np.random.default_rng(7))
    b = compose(digits, range(50), [1, 2, 3], np.random.default_rng(7))
    c = compose(digits, range(50), [1, 2, 3], np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    fresh = make_hard.__wrapped__()  # not the cached object: regenerated from the seed
    assert torch.equal(fresh.train_images, make_hard().train_images)
    assert torch.equal(fresh.test_images, make_hard().test_images)


def test_split_by_source_digit_is_disjoint():
    h = make_hard()
    _, labels = load_digit_images()
    s = demo_splits(labels.numpy())
    assert not set(h.train_sources.tolist()) & set(h.test_sources.tolist())
    assert set(h.test_sources.tolist()) == set(s.test.tolist())  # the demo's fixed test digits
    assert set(h.train_sources.tolist()) == set(s.train.tolist())


def test_clutter_comes_only_from_the_pool():
    """Fragments come from ``pool`` alone (the composite's own split): two blank pools give
    the same canvases, a pool with ink different ones."""
    digits, _ = load_digit_images()
    d = digits.clone()
    d[0] = 0.0
    d[1] = 0.0
    blank_a = compose(d, [0], [5, 6, 7], np.random.default_rng(1))
    blank_b = compose(d, [1], [5, 6, 7], np.random.default_rng(1))
    inked = compose(d, [2], [5, 6, 7], np.random.default_rng(1))
    assert torch.equal(blank_a, blank_b) and not torch.equal(blank_a, inked)


def test_build_data_demo_hard_sizes_and_classes():
    cfg = TrainConfig(batch_size=32, val_split=0.1, seed=0)
    data = build_data("demo-hard", _info(CANVAS), cfg)
    h = make_hard()
    n_tr = len(h.train_labels)
    assert dataset_classes("demo-hard") == data.classes and data.num_classes == 10
    assert data.sizes == {"train": n_tr - round(0.1 * n_tr), "val": round(0.1 * n_tr),
                          "test": len(h.test_labels)}
    x, y = next(iter(data.test))
    assert x.shape == (32, 3, CANVAS, CANVAS)
    # The test loader serves exactly the test composites (normalised with mean = std = 0.5).
    assert torch.allclose((x[:, :1] * 0.5 + 0.5), h.test_images[:32], atol=1e-5)
    assert torch.equal(y, h.test_labels[:32])


@pytest.mark.slow  # writes 4,312 PNG files
def test_folder_round_trip(tmp_path, capsys):
    h = make_hard()
    assert main(["--out", str(tmp_path / "hard")]) == 0  # python -m cafeslim.data.composite
    assert f"{len(h.test_labels)} test composites" in capsys.readouterr().out
    out = tmp_path / "hard"
    for split, images, labels in (("train", h.train_images, h.train_labels),
                                  ("val", h.test_images, h.test_labels)):
        files = sorted((out / split).glob("*/*.png"))
        assert len(files) == len(labels)
        for path in files[:: max(1, len(files) // 25)]:  # a sample of files of every class
            i, label = int(path.stem), int(path.parent.name)
            assert label == int(labels[i])
            back = np.asarray(Image.open(path), dtype=np.float32) / 255.0
            assert back.shape == (CANVAS, CANVAS)
            assert np.abs(back - images[i, 0].numpy()).max() <= 0.5 / 255 + 1e-6
    # The ordinary folder loader reads it with the same classes and split sizes.
    data = build_data(str(out), _info(CANVAS), TrainConfig(batch_size=32, val_split=0.1, workers=0))
    assert data.classes == tuple(str(c) for c in range(10))
    assert data.sizes["test"] == len(h.test_labels)
    assert data.sizes["train"] + data.sizes["val"] == len(h.train_labels)
    with pytest.raises(OutputExistsError):
        write_folder(out, h)
