"""The training loop: exact resume (interrupted between epochs and mid-epoch), best on holdout."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from cafeslim.config import RetrainConfig
from cafeslim.data import build_data
from cafeslim.errors import CheckpointError, OutputExistsError
from cafeslim.models import create
from cafeslim.pipeline.objects import at_size
from cafeslim.training import train
from cafeslim.training.loop import BEST, LAST, METRICS

CFG = RetrainConfig(epochs=2, batch_size=64, img_size=16, device="cpu", workers=0, seed=1,
                    mixup=0.2, model_ema=True, warmup_epochs=0.5)


pytestmark = pytest.mark.usefixtures("one_thread")


def _fresh():
    torch.manual_seed(0)
    info = at_size(create("timm:test_resnet", num_classes=10), 16)
    return info.model, build_data("demo", info, CFG)


class _SigintAt:
    """Delegates to a Data and sends SIGINT to this process at one (epoch, batch)."""

    def __init__(self, data, epoch, batch):
        self.data, self.at = data, (epoch, batch)

    def __getattr__(self, name):
        return getattr(self.data, name)

    def epoch_batches(self, epoch, position=0):
        for i, batch in enumerate(self.data.epoch_batches(epoch, position), start=position):
            if (epoch, i) == self.at:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, data = _fresh()
    out = tmp_path_factory.mktemp("plain")
    return train(model, data, CFG, out_dir=out, progress=False), out


def _untimed(history):
    return [{k: v for k, v in r.items() if k not in ("img_s", "train_s")} for r in history]


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_outputs_and_metrics(uninterrupted):
    outcome, out = uninterrupted
    assert (out / LAST).is_file() and (out / BEST).is_file()
    lines = [json.loads(s) for s in (out / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("loss", "lr", "test_top1", "test_top5", "holdout_top1", "img_s"):
        assert all(r[key] is not None for r in lines), key
    assert outcome.test_top1 == lines[-1]["test_top1"] and outcome.epochs == 2
    # best.pt is chosen on the holdout, never on the test split
    best = torch.load(out / BEST, weights_only=True)
    assert best["holdout_top1"] == max(r["holdout_top1"] for r in lines)
    assert best["epoch"] == outcome.best_epoch


def test_resume_after_an_epoch_is_bit_exact(uninterrupted, tmp_path):
    def stop(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    model, data = _fresh()
    with pytest.raises(KeyboardInterrupt):
        train(model, data, CFG, out_dir=tmp_path, progress=False, callback=stop)
    model, data = _fresh()
    resumed = train(model, data, CFG, out_dir=tmp_path, resume=True, progress=False)
    assert resumed.resumed_from == data.steps_per_epoch
    _same(resumed.model, uninterrupted[0].model)
    assert _untimed(resumed.history) == _untimed(uninterrupted[0].history)
    assert len((tmp_path / METRICS).read_text().splitlines()) == 2


def test_resume_after_ctrl_c_mid_epoch_is_bit_exact(uninterrupted, tmp_path):
    model, data = _fresh()
    with pytest.raises(KeyboardInterrupt):
        train(model, _SigintAt(data, 1, 5), CFG, out_dir=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / LAST, weights_only=True)
    assert (ckpt["epoch"], ckpt["position"]) == (1, 6)  # saved between two steps
    model, data = _fresh()
    resumed = train(model, data, CFG, out_dir=tmp_path, resume=True, progress=False)
    _same(resumed.model, uninterrupted[0].model)
    # the sensitivity of the comparison: one step more or less gives other weights
    assert not torch.equal(ckpt["model"]["fc.weight"], resumed.model.state_dict()["fc.weight"])


def test_refuses_to_overwrite_and_foreign_checkpoints(uninterrupted, tmp_path):
    _, out = uninterrupted
    model, data = _fresh()
    with pytest.raises(OutputExistsError):
        train(model, data, CFG, out_dir=out, progress=False)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    with pytest.raises(CheckpointError, match="another model"):
        train(other, data, CFG, out_dir=out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="other settings"):
        train(model, data, RetrainConfig(**{**CFG.__dict__, "lr": 0.3}), out_dir=out,
              resume=True, progress=False)


def _norm_momenta(model):
    return {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def test_a_slow_batchnorm_momentum_is_raised_for_a_short_training_unless_set():
    from cafeslim.training.recipe import auto_bn_momentum
    from cafeslim.training.run import bn_notes

    cfg = RetrainConfig(epochs=1, batch_size=64, img_size=16, device="cpu", workers=0, seed=1)
    model, data = _fresh()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.01
    steps = cfg.epochs * data.steps_per_epoch
    assert auto_bn_momentum(model, steps) == 0.1 and auto_bn_momentum(model, 1000) is None
    assert "momentum 0.1" in bn_notes(model, cfg, steps)[0]
    train(model, data, cfg, progress=False)
    assert _norm_momenta(model) == {0.1}
    model, _ = _fresh()  # timm's own 0.1 is left alone, and an explicit value wins
    assert bn_notes(model, cfg, steps) == [] and auto_bn_momentum(model, steps) is None
    train(model, data, replace(cfg, bn_momentum=0.01), progress=False)
    assert _norm_momenta(model) == {0.01}
