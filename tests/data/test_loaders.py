"""Loaders: demo digits, D_tr/D_val split, timm preprocessing, resumable and sharded order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cafeslim.config import TrainConfig
from cafeslim.data import ResumableSampler, build_data, build_transforms, dataset_classes, split_val
from cafeslim.data.demo import demo_splits, load_digit_images
from cafeslim.errors import DataError
from cafeslim.models import ModelInfo

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.4, 0.3),
               "std": (0.2, 0.25, 0.3), "crop_pct": 0.875, "crop_mode": "center"}


def _info(size: int = 32) -> ModelInfo:
    cfg = {**DATA_CONFIG, "input_size": (3, size, size)}
    return ModelInfo(model=nn.Identity(), name="dummy", input_size=(3, size, size), data_config=cfg)


def _folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_demo_data_follow_the_model_preprocessing():
    cfg = TrainConfig(batch_size=16, val_split=0.1, seed=0, img_size=40)
    data = build_data("demo", _info(), cfg)
    assert data.num_classes == 10 and dataset_classes("demo") == data.classes
    assert data.sizes == {"train": 1294, "val": 144, "test": 359}
    x, y = next(data.epoch_batches(0))
    assert x.shape == (16, 3, 40, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Pixels in [0, 1] normalised with the model's per-channel mean/std.
    lo = (0 - torch.tensor(DATA_CONFIG["mean"])) / torch.tensor(DATA_CONFIG["std"])
    assert torch.allclose(x.amin(dim=(0, 2, 3)), lo, atol=1e-5)
    assert data.steps_per_epoch == 1294 // 16


def test_val_split_is_fixed_by_the_seed_and_disjoint():
    tr, va = split_val(range(1000), 0.05, seed=1)
    tr2, va2 = split_val(range(1000), 0.05, seed=1)
    _, va3 = split_val(range(1000), 0.05, seed=2)
    assert len(va) == 50 and np.array_equal(va, va2) and not np.array_equal(va, va3)
    assert not set(tr) & set(va) and len(tr) + len(va) == 1000
    assert len(split_val(range(5), 0.01, seed=0)[1]) == 1  # a requested D_val is never empty
    # The demo's held-out test split does not move with the seed.
    labels = load_digit_images()[1].numpy()
    assert np.array_equal(demo_splits(labels).test, demo_splits(labels).test)


def test_batch_larger_than_training_set_is_a_data_error():
    with pytest.raises(DataError, match="fewer than one global batch"):
        build_data("demo", _info(), TrainConfig(batch_size=4096))


def test_sampler_resumes_mid_epoch_and_shards_like_distributed_sampler():
    s = ResumableSampler(range(50), seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2)
    s.set_position(3, batch_size=4)
    assert list(s) == full[12:] and len(s) == 38
    s.set_epoch(3)  # a new epoch starts from its beginning, in another order
    assert len(list(s)) == 50 and [i for i, _ in s] != [i for i, _ in full]
    # Order and sample seeds depend on (seed, epoch) only, not on the sampler's history.
    fresh = ResumableSampler(range(50), seed=3)
    fresh.set_epoch(2)
    assert list(fresh) == full
    ranks = [ResumableSampler(range(50), num_replicas=2, rank=r, seed=3) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    a, b = ([i for i, _ in r] for r in ranks)
    assert len(a) == len(b) == 25 and set(a) | set(b) == set(range(50)) and not set(a) & set(b)


def test_transforms_are_timms_for_the_model():
    train_tf, eval_tf = build_transforms(_info(), img_size=48)
    img = Image.fromarray(np.zeros((60, 70, 3), dtype=np.uint8))
    assert train_tf(img).shape == eval_tf(img).shape == (3, 48, 48)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert "RandomResizedCropAndInterpolation" in names and "Normalize" in names


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_loader_resumes_exactly_with_random_augmentation(tmp_path, workers):
    root = _folder(tmp_path / "ds")
    cfg = TrainConfig(batch_size=4, val_split=0.2, seed=5, workers=workers, device="cpu")
    data = build_data(str(root), _info(), cfg)
    assert data.sizes == {"train": 24, "val": 6, "test": 6} and data.steps_per_epoch == 6
    torch_state = torch.get_rng_state()
    epoch = list(data.epoch_batches(1))
    # A fresh loader (as after a restart) started at batch 4 of epoch 1 gives the same tail.
    again = build_data(str(root), _info(), cfg)
    tail = list(again.epoch_batches(1, position=4))
    assert len(epoch) == 6 and len(tail) == 2
    for (x1, y1), (x2, y2) in zip(epoch[4:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Augmentation is random across epochs, and loading never touches the global torch RNG.
    other = list(data.epoch_batches(2))
    assert not torch.equal(epoch[0][0], other[0][0])
    assert torch.equal(torch_state, torch.get_rng_state())
    # D_val and the real val/ use the deterministic evaluation transform.
    v1 = torch.cat([x for x, _ in data.val])
    v2 = torch.cat([x for x, _ in again.val])
    assert v1.shape == (6, 3, 32, 32) and torch.equal(v1, v2)
    assert data.test is not None and sum(len(y) for _, y in data.test) == 6
    assert data.bad_images == 0


def test_unreadable_images_are_counted_across_worker_processes(tmp_path):
    root = _folder(tmp_path / "ds", classes=2, per_class=8)
    (root / "train" / "class0" / "3.png").write_bytes(b"\x89PNG broken")
    cfg = TrainConfig(batch_size=4, val_split=0.0, seed=0, workers=2, device="cpu")
    data = build_data(str(root), _info(), cfg)
    batches = list(data.epoch_batches(0))
    assert len(batches) == 4 and all(x.shape == (4, 3, 32, 32) for x, _ in batches)
    assert data.bad_images == 1  # met once, in a worker process, seen here
