"""Supernet training loop: settings, schedule, run folder, checkpoints, interrupts, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from cafeslim.config import BinsConfig, RunSettings, TrainConfig, dump_yaml, load_yaml, resolve, section
from cafeslim.errors import CheckpointError, ConfigError, OutputExistsError
from cafeslim.pipeline import build, start_run
from cafeslim.supernet import Supernet
from cafeslim.supernet.checkpoint import load_checkpoint
from cafeslim.supernet.train import WarmupCosine, param_groups, train_supernet

MODEL = "timm:test_resnet"
# 72 training images at batch 8: 9 steps per epoch, so a few steps cross epochs.
CFG = TrainConfig(epochs=2, batch_size=8, img_size=32, val_split=0.95, device="cpu", workers=0,
                  log_every=2, ckpt_every=3, max_steps=6, warmup_epochs=0.5, seed=1)


def run_training(model, cfg, run, resume=False, bins=None, callback=None):
    """The training stage as ``cafeslim search`` runs it: the run folder, then the supernet."""
    b = start_run(RunSettings(model, train=cfg, bins=BinsConfig(**(bins or {}))), run,
                  resume=resume)
    net = Supernet(b.info.model, b.graph, b.space)
    return train_supernet(net, b.space, b.data, b.settings.train, run, resume=resume,
                          progress=False, model_name=b.info.name, callback=callback)


def train_in(run, cfg, resume=True, model=MODEL, bins=None):
    """train_supernet alone on a folder, past the run folder's own checks."""
    b = build(RunSettings(model, train=cfg, bins=BinsConfig(**(bins or {}))))
    net = Supernet(b.info.model, b.graph, b.space)
    return train_supernet(net, b.space, b.data, cfg, run, resume=resume, progress=False,
                          model_name=b.info.name)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- settings


def test_resolve_precedence_and_yaml_round_trip(tmp_path):
    path = dump_yaml({"model": MODEL, "train": TrainConfig(epochs=3, amp="bf16")}, tmp_path / "c.yaml")
    loaded = load_yaml(path)
    assert loaded["model"] == MODEL
    cfg = resolve(TrainConfig, {"epochs": None, "seed": 7}, section(loaded, "train"))
    assert (cfg.epochs, cfg.amp, cfg.seed) == (3, "bf16", 7)
    assert resolve(TrainConfig, {}, {"batch-size": 16, "lr": 1}).lr == 1.0  # int for a float
    assert resolve(TrainConfig, {}, yaml.safe_load(path.read_text())["train"]) == \
        TrainConfig(epochs=3, amp="bf16")


@pytest.mark.parametrize("flags, yaml_values, match", [
    ({"epoch": 3}, {}, r"unknown train setting 'epoch'.*valid: .*epochs"),
    ({}, {"amp": "fp8"}, r"invalid value 'fp8' for amp; choose from off, bf16, fp16"),
    ({}, {"batch_size": "64"}, r"batch_size must be an integer"),
    ({"channels_last": 1}, {}, r"channels_last must be true or false"),
    ({"val_split": 1.5}, {}, r"val_split must be in \[0, 1\)"),
])
def test_bad_settings_are_config_errors(flags, yaml_values, match):
    with pytest.raises(ConfigError, match=match):
        resolve(TrainConfig, flags, yaml_values)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_schedule_and_weight_decay_groups():
    f = WarmupCosine(warmup=4, total=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5) and f(14) == 0.0
    assert TrainConfig(batch_size=128).peak_lr(world_size=2) == pytest.approx(0.1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4)
    assert [p.ndim for p in decay["params"]] == [4, 2] and decay["weight_decay"] == 1e-4
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


# ---------------------------------------------------------------- the run folder


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "base"
    result = run_training(MODEL, CFG, run)
    assert result.steps == result.total_steps == 6 and result.resumed_from is None
    return run


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def _snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_training_writes_the_run_folder(base_run):
    assert sorted(p.name for p in base_run.iterdir()) == ["bins.json", "config.yaml", "graph.json",
                                                          "last.pt", "metrics.jsonl"]
    lines = [json.loads(l) for l in (base_run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [2, 4, 6]
    assert set(lines[0]) >= {"step", "epoch", "loss", "lr", "img_s", "widths", "candidates"}
    assert all(0 < l["widths"]["min"] <= l["widths"]["mean"] <= l["widths"]["max"] <= 1 for l in lines)
    ckpt = load_checkpoint(base_run / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["position"]) == (6, 0, 6)
    assert ckpt["fingerprint"]["model"] == MODEL and ckpt["config"]["seed"] == 1
    assert set(ckpt["rng"]) >= {"python", "numpy", "numpy_global", "torch"}
    config = load_yaml(base_run / "config.yaml")
    assert config["model"] == MODEL and config["data"] == "demo"
    assert resolve(TrainConfig, {}, config["train"]) == CFG
    assert RunSettings.from_dict(config).train == CFG


def test_fresh_run_refuses_an_existing_checkpoint(base_run, tmp_path):
    run = _copy(base_run, tmp_path / "run")
    before = _snapshot(run)
    with pytest.raises(OutputExistsError, match="exists and is not empty; pass --resume"):
        run_training(MODEL, CFG, run)
    # Below the run folder, training itself never overwrites a checkpoint either.
    with pytest.raises(OutputExistsError, match="already holds a checkpoint; pass --resume"):
        train_in(run, CFG, resume=False)
    assert _snapshot(run) == before


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_training(MODEL, CFG, tmp_path / "nothing", resume=True)
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        train_in(tmp_path / "nothing", CFG)
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_one_line_and_nothing_is_overwritten(base_run, tmp_path, damage):
    run = _copy(base_run, tmp_path / "run")
    data = (run / "last.pt").read_bytes()
    bad = {"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 10,
           "empty": b""}[damage]
    (run / "last.pt").write_bytes(bad)
    before = _snapshot(run)
    with pytest.raises(CheckpointError) as err:
        run_training(MODEL, CFG, run, resume=True)
    assert str(err.value) == f"corrupt or truncated checkpoint {run / 'last.pt'}"
    assert _snapshot(run) == before


def test_resume_of_a_run_made_for_another_model(base_run, tmp_path):
    run = _copy(base_run, tmp_path / "run")
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="model 'timm:test_resnet' -> 'timm:test_efficientnet'"):
        run_training("timm:test_efficientnet", CFG, run, resume=True)
    with pytest.raises(CheckpointError) as err:
        train_in(run, CFG, model="timm:test_efficientnet")
    assert str(err.value) == (f"checkpoint {run / 'last.pt'} was made for model {MODEL}, "
                              "not timm:test_efficientnet")
    assert _snapshot(run) == before


def test_resume_with_other_settings_or_bins_is_refused(base_run, tmp_path):
    run = _copy(base_run, tmp_path / "run")
    before = _snapshot(run)
    other = replace(CFG, batch_size=16, seed=2)
    with pytest.raises(ConfigError, match=r"other settings \(train.batch_size 8 -> 16; "
                                          r"train.seed 1 -> 2\)"):
        run_training(MODEL, other, run, resume=True)
    with pytest.raises(ConfigError, match=r"bins.beta 1.0 -> 4.0"):
        run_training(MODEL, CFG, run, resume=True, bins={"beta": 4.0})
    # The checkpoint's own record catches the same changes below the run folder.
    with pytest.raises(CheckpointError, match=r"other settings \(batch_size 8 -> 16, seed 1 -> 2\)"):
        train_in(run, other)
    with pytest.raises(CheckpointError, match="other bins"):
        train_in(run, CFG, bins={"beta": 4.0})
    assert _snapshot(run) == before


def test_resume_continues_and_keeps_one_log(base_run, tmp_path):
    run = _copy(base_run, tmp_path / "run")
    more = replace(CFG, max_steps=None, epochs=1)  # a changed schedule is refused ...
    with pytest.raises(ConfigError, match="max_steps 6 -> None"):
        run_training(MODEL, more, run, resume=True)
    with pytest.raises(CheckpointError, match="max_steps 6 -> None"):
        train_in(run, more)
    # ... while where and how often it reports may change.
    result = run_training(MODEL, replace(CFG, log_every=1, ckpt_every=0), run, resume=True)
    assert result.resumed_from == 6 and result.steps == 6  # already complete: nothing to do
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [2, 4, 6]


@pytest.mark.parametrize("how", ["sigint", "keyboard_interrupt"])
def test_interrupt_writes_a_checkpoint_of_the_current_step(tmp_path, how):
    run = tmp_path / "run"
    cfg = replace(CFG, ckpt_every=0, max_steps=8)

    def stop_at_5(step, stats):
        if step == 5:
            if how == "sigint":  # Ctrl-C: the step finishes, then checkpoint and stop
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(MODEL, cfg, run, callback=stop_at_5)
    assert load_checkpoint(run / "last.pt")["step"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    result = run_training(MODEL, cfg, run, resume=True)
    assert (result.resumed_from, result.steps) == (5, 8)
    assert load_checkpoint(run / "last.pt")["step"] == 8
