"""Recipe pieces: schedules, mixing, distillation, EMA, the small-image augmentation, the API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cafeslim
from cafeslim.config import RetrainConfig
from cafeslim.data.augment import PadCrop, resolve_aug
from cafeslim.data.demo import DigitsDataset, load_digit_images
from cafeslim.errors import ConfigError
from cafeslim.training.distill import Distiller, kd_loss
from cafeslim.training.recipe import (ModelEma, WarmupSchedule, make_optimizer, make_scheduler,
                                      mix_batch)


def test_schedules():
    cos = WarmupSchedule("cosine", warmup=4, total=20)
    assert [cos(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cos(12) == pytest.approx(0.5) and cos(20) == 0.0
    step = WarmupSchedule("step", warmup=0, total=100, steps_per_epoch=10, decay_epochs=3,
                          decay_rate=0.5)
    assert (step(29), step(30), step(60)) == (1.0, 0.5, 0.25)
    opt = make_optimizer(nn.Linear(3, 2), RetrainConfig(lr=0.4, warmup_epochs=0))
    sched = make_scheduler(opt, RetrainConfig(lr=0.4, warmup_epochs=0, epochs=2), 5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # biases are never decayed
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_is_a_function_of_seed_and_step(kind):
    cfg = RetrainConfig(**{kind: 1.0}, label_smoothing=0.0)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    a, ta = mix_batch(x, y, 4, cfg, step=3)
    b, tb = mix_batch(x, y, 4, cfg, step=3)
    c, _ = mix_batch(x, y, 4, cfg, step=4)
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert not torch.equal(a, x) and torch.allclose(ta.sum(1), torch.ones(8))
    assert mix_batch(x, y, 4, RetrainConfig(), 0) == (x, None)  # off by default


def test_distillation():
    s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert float(kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_loss(s, t, 1.0)) > 1.0
    d = Distiller(nn.Linear(4, 3), alpha=1.0, temperature=2.0)
    with pytest.raises(ConfigError, match="classes"):
        d.loss(torch.zeros(2, 5), torch.zeros(2, 4), torch.tensor(0.0))


def test_ema_moves_towards_the_model():
    model = nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(2.0)
    start = ema.module.weight.clone()
    ema.update(model)
    assert torch.allclose(ema.module.weight, start + 1.0)


def test_pad_crop_shift_is_seeded_and_default_for_small_images():
    assert resolve_aug("auto", "demo", 64) == "shift" and resolve_aug("auto", "DIR", 224) == "timm"
    # Small-image folders: timm's crop kept the supernet at chance on demo-hard at 32 px.
    assert resolve_aug("auto", "demo-hard", 32) == "shift" and resolve_aug("auto", "DIR", 32) == "shift"
    # Settings without the field (run folders of before): what they trained with.
    assert resolve_aug(None, "demo", 64) == "none" and resolve_aug(None, "DIR", 32) == "timm"
    ds = PadCrop(DigitsDataset(*load_digit_images(), (3, 32, 32), (0.5,), (0.5,)), pad=2)
    a, b = ds[(5, 11)][0], ds[(5, 11)][0]
    shifted = [ds[(5, s)][0] for s in range(8)]
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    assert any(not torch.equal(a, o) for o in shifted)


def test_public_api_names():
    assert cafeslim.train is cafeslim.training.loop.train
    assert cafeslim.RetrainConfig is RetrainConfig
    assert "train" in cafeslim.__all__


def test_train_on_plain_batches_without_a_folder():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 4, 4)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    before = model[1].weight.detach().clone()
    out = cafeslim.train(model, batches, RetrainConfig(epochs=3, lr=0.5, device="cpu",
                                                       warmup_epochs=0),
                         test=batches, progress=False)
    assert out.epochs == 3 and out.steps == 12 and len(out.history) == 3
    assert out.history[-1]["loss"] < out.history[0]["loss"]
    assert out.test_top1 > 0.8 and out.best_epoch is None  # no holdout: no best.pt
    assert not torch.equal(before, out.model[1].weight)
