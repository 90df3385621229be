"""The built-in demos of the new tasks: masks and labels consistent with the digits they show."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cafeslim.config import TrainConfig
from cafeslim.data.demo import demo_splits, load_digit_images
from cafeslim.tasks import segmentation_data as sd
from cafeslim.tasks.multilabel_data import DEMO_LABELS, demo_label_table


def test_every_stroke_pixel_and_only_those_carry_a_digit_class():
    train, test = sd.demo_canvases()
    for c in (train, test):
        strokes = c.images[:, 0] > sd.STROKE
        # Digits never overlap, so the canvas value is the digit's own: mask > 0 iff stroke.
        assert torch.equal(strokes, c.masks > 0)
        assert int(c.masks.max()) == 10 and int(c.masks.min()) == 0
        per_canvas = [len(set(m.unique().tolist()) - {0}) for m in c.masks]
        assert max(per_canvas) <= sd.DIGITS_PER_CANVAS and min(per_canvas) >= 1


def test_a_canvas_labels_each_digit_with_its_class_plus_one(monkeypatch):
    monkeypatch.setattr(sd, "DIGIT_SIZES", (24, 24))
    images, labels = load_digit_images()
    i, j = int(np.flatnonzero(labels.numpy() == 3)[0]), int(np.flatnonzero(labels.numpy() == 8)[0])
    c = sd.digit_canvases(images[[i, j]], labels[[i, j]], 1, np.random.default_rng(1))
    assert c.images.shape == (1, 1, 64, 64)
    assert set(c.masks[0].unique().tolist()) == {0, 4, 9}
    for k, cls in ((i, 4), (j, 9)):
        digit = F.interpolate(images[k][None], size=(24, 24), mode="bilinear", align_corners=False)
        assert int((c.masks[0] == cls).sum()) == int((digit.clamp(0, 1) > sd.STROKE).sum())


def test_the_test_canvases_hold_the_held_out_digits_once_each():
    images, labels = load_digit_images()
    splits = demo_splits(labels.numpy())
    train, test = sd.demo_canvases()
    assert len(test.images) == -(-len(splits.test) // 2)
    assert len(train.images) == -(-len(splits.train) * sd.TRAIN_USES // 2)
    # The fixed canvases do not move with anything: rebuilding gives the same tensors.
    sd.demo_canvases.cache_clear()
    again = sd.demo_canvases()
    assert torch.equal(again[1].masks, test.masks) and torch.equal(again[0].images, train.images)


def test_segmentation_demo_samples_at_another_input_size():
    train, _ = sd.demo_canvases()
    ds = sd.MaskedTensors(train, (3, 32, 32), (0.5,), (0.25,))
    img, mask = ds[5]
    assert img.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64
    assert torch.equal(mask, train.masks[5, ::2, ::2].long())   # nearest: every other pixel
    full = sd.MaskedTensors(train, (3, 64, 64), (0.5,), (0.25,))[5][0]
    assert torch.allclose(full[0] * 0.25 + 0.5, train.images[5, 0], atol=1e-6)  # mean/std


def test_joint_shift_moves_image_and_mask_together():
    train, _ = sd.demo_canvases()
    base = sd.MaskedTensors(train, (1, 64, 64), (0.0,), (1.0,))
    ds = sd.JointShift(base, pad=3)
    moved = 0
    for seed in range(6):
        img, mask = ds[(0, seed)]
        assert torch.equal(img[0] > sd.STROKE, mask > 0)   # still aligned stroke for stroke
        moved += not torch.equal(mask, base[0][1])
    assert moved >= 4


def test_multilabel_demo_labels_follow_the_digits():
    table = demo_label_table()
    for d in range(10):
        even, big, prime, loop = table[d].tolist()
        assert even == (d % 2 == 0) and big == (d > 4) and prime == (d in (2, 3, 5, 7))
        assert loop == (d in (0, 4, 6, 8, 9))
    assert DEMO_LABELS == ("even", "greater_than_4", "prime", "closed_loop")

    from cafeslim.data import build_data
    from cafeslim.models import create
    from cafeslim.pipeline.objects import at_size

    info = at_size(create("timm:test_resnet", num_classes=4), 32)
    cfg = TrainConfig(batch_size=64, aug="none")
    ml = build_data("demo", info, cfg, "multilabel")
    cls = build_data("demo", info, cfg)
    assert ml.classes == DEMO_LABELS and ml.sizes == cls.sizes
    for (x1, y1), (x2, y2) in zip(ml.test, cls.test):   # the same held-out digits
        assert torch.equal(x1, x2) and torch.equal(y1, table[y2])


@pytest.mark.parametrize("task", ["segmentation", "multilabel"])
def test_demo_hard_is_classification_only(task):
    from cafeslim.data import dataset_classes
    from cafeslim.errors import ConfigError

    with pytest.raises(ConfigError, match="demo-hard"):
        dataset_classes("demo-hard", task)
