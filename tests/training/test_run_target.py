"""``train_target`` on a search run: scratch and inherit, KD from the supernet, widths kept."""

from __future__ import annotations

import json

import pytest
import torch

from cafeslim.config import RetrainConfig, RunSettings, SearchConfig, TrainConfig
from cafeslim.errors import ConfigError
from cafeslim.pipeline import run_search
from cafeslim.training.run import make_teacher, train_target
from cafeslim.training.target import resolve_target

SETTINGS = RunSettings(
    "timm:test_resnet", data="demo",
    train=TrainConfig(epochs=1, max_steps=6, batch_size=32, img_size=16, device="cpu", workers=0,
                      log_every=2, ckpt_every=2, warmup_epochs=0.2, seed=3),
    search=SearchConfig(flops="50%", population=4, iterations=2, parents=2, recal_batches=1))
CFG = RetrainConfig(epochs=1, batch_size=64, device="cpu", workers=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "run"
    run_search(SETTINGS, folder, progress=False)
    return folder


def _widths(path):
    return json.loads(path.read_text())["widths"]


def test_scratch_trains_the_chosen_widths(run):
    res = train_target(str(run), CFG, progress=False)
    assert res.out_dir == run / "train" and res.teacher == "none"  # random original: no KD
    result = json.loads((run / "result.json").read_text())["budgets"][0]
    assert _widths(run / "train" / "widths.json") == result["widths"]
    meta = json.loads((run / "train" / "widths.json").read_text())
    assert meta["trained"]["init"] == "scratch" and 0 <= meta["top1_test"] <= 1
    assert meta["img_size"] == 16 and not res.export_errors


def test_inherit_with_supernet_teacher(run, tmp_path):
    cfg = RetrainConfig(**{**CFG.__dict__, "init": "inherit", "teacher": "supernet"})
    res = train_target(str(run), cfg, out_dir=tmp_path / "ft", progress=False)
    assert res.teacher.startswith("supernet") and res.outcome.epochs == 1
    assert _widths(tmp_path / "ft" / "widths.json") == _widths(run / "train" / "widths.json")


def test_teacher_rules(run):
    t = resolve_target(str(run))
    with pytest.raises(ConfigError, match="random weights"):
        make_teacher(t, "original", 10, 16)
    with pytest.raises(ConfigError, match="itself"):
        make_teacher(resolve_target("timm:test_resnet"), "original", 10, 16)
    teacher, name = make_teacher(t, "timm:test_resnet", 10, 16)
    assert name == "timm:test_resnet" and teacher(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_export_target_inherits_the_exported_weights(run, tmp_path):
    from cafeslim.pipeline import export_run

    rep = export_run(run, out_dir=tmp_path / "export", formats=("pt",))
    exported = torch.load(tmp_path / "export" / "model.pt", weights_only=False)
    cfg = RetrainConfig(**{**CFG.__dict__, "init": "inherit", "lr": 1e-9, "warmup_epochs": 0,
                           "label_smoothing": 0.0})
    res = train_target(str(tmp_path / "export"), cfg, progress=False)
    assert res.out_dir == tmp_path / "export" / "train" and rep.files
    # a vanishing learning rate keeps the exported weights: they were the starting point
    trained = res.outcome.model.state_dict()
    for k, v in exported.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.allclose(v, trained[k], atol=1e-6), k
