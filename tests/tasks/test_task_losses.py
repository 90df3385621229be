"""The tasks' losses and distillation terms: values by hand, what is ignored, what is refused."""

from __future__ import annotations

import math

import pytest
import torch

from cafeslim.config import RetrainConfig
from cafeslim.errors import ConfigError
from cafeslim.tasks import get_task


def test_segmentation_loss_is_per_pixel_cross_entropy_without_ignored_pixels():
    seg = get_task("segmentation")
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 2, 0, 1] = math.log(4.0)   # pixel 1: softmax (1/6, 1/6, 4/6)
    target = torch.tensor([[[0, 2, 255]]])
    expected = (math.log(3.0) + -math.log(4 / 6)) / 2   # the 255 pixel does not count
    assert float(seg.loss({"out": logits}, target)) == pytest.approx(expected, rel=1e-6)
    # Label smoothing is classification's: the segmentation loss ignores it.
    assert float(seg.loss_fn(0.3)({"out": logits}, target)) == pytest.approx(expected, rel=1e-6)
    # An auxiliary head is trained with torchvision's 0.5 weight.
    aux = torch.zeros(1, 3, 1, 3)
    assert float(seg.loss({"out": logits, "aux": aux}, target)) == pytest.approx(
        expected + 0.5 * math.log(3.0), rel=1e-6)


def test_segmentation_loss_upsamples_low_resolution_logits_to_the_mask():
    seg = get_task("segmentation")
    logits = torch.zeros(2, 4, 2, 2, requires_grad=True)
    loss = seg.loss(logits, torch.zeros(2, 8, 8, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(4.0)) and logits.grad is not None


def test_multilabel_loss_is_binary_cross_entropy_with_logits():
    ml = get_task("multilabel")
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    by_hand = -(math.log(0.5) + math.log(1 - sig(2.0)) + math.log(1 - sig(-1.0)) + math.log(0.5)) / 4
    assert float(ml.loss(logits, target)) == pytest.approx(by_hand, rel=1e-6)
    assert float(ml.loss(logits, target.long())) == pytest.approx(by_hand, rel=1e-6)  # 0/1 ints


def test_classification_loss_keeps_label_smoothing_and_mixed_targets():
    cls = get_task("classification")
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    plain = float(cls.loss(logits, y))
    smoothed = float(cls.loss_fn(0.1)(logits, y))
    assert plain == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))
    assert smoothed > plain
    soft = torch.tensor([[0.5, 0.5]])
    mixed = float(cls.retrain_loss(logits, y, soft, 0.0))
    assert mixed == pytest.approx(-0.5 * (math.log(math.exp(2) / (math.exp(2) + 1))
                                          + math.log(1 / (math.exp(2) + 1))))


def test_distillation_per_pixel_and_per_label():
    seg, ml, cls = (get_task(n) for n in ("segmentation", "multilabel", "classification"))
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    # Per pixel: the classification term over the pixels as rows.
    rows = lambda x: x.movedim(1, -1).reshape(-1, 3)  # noqa: E731
    assert float(seg.distill({"out": s}, {"out": t}, 2.0)) == pytest.approx(
        float(cls.distill(rows(s), rows(t), 2.0)), rel=1e-5)
    assert float(seg.distill(s, s, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # Per label: T² · KL of two Bernoulli distributions, by hand for one label.
    p, q = 1 / (1 + math.exp(-1.0 / 2)), 1 / (1 + math.exp(-3.0 / 2))
    kl = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert float(ml.distill(torch.tensor([[1.0]]), torch.tensor([[3.0]]), 2.0)) == pytest.approx(4 * kl, rel=1e-5)
    assert float(ml.distill(t[:, :, 0, 0], t[:, :, 0, 0], 3.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["segmentation", "multilabel"])
def test_mixup_and_cutmix_are_classification_only(name):
    task = get_task(name)
    for bad in (RetrainConfig(mixup=0.2), RetrainConfig(cutmix=1.0)):
        with pytest.raises(ConfigError, match="classification"):
            task.check_recipe(bad)
    task.check_recipe(RetrainConfig())
    get_task("classification").check_recipe(RetrainConfig(mixup=0.2, cutmix=1.0))


def test_segmentation_refuses_timm_augmentation_that_would_not_move_masks():
    from cafeslim.models import create
    from cafeslim.pipeline.objects import at_size
    from cafeslim.data import build_data
    from cafeslim.config import TrainConfig

    info = at_size(create("tv:lraspp_mobilenet_v3_large", num_classes=11), 32)
    for cfg in (TrainConfig(aug="timm"), TrainConfig(scale=(0.5, 1.0))):
        with pytest.raises(ConfigError, match="mask"):
            build_data("demo", info, cfg, "segmentation")


def test_tasks_are_registered_and_unknown_names_fail():
    from cafeslim.config import RunSettings, choices
    from cafeslim.tasks import task_names

    assert set(choices(RunSettings, "task")) <= set(task_names())
    assert get_task(None).name == "classification" and get_task(get_task("multilabel")).name == "multilabel"
    with pytest.raises(ConfigError, match="invalid task 'depth'"):
        get_task("depth")
