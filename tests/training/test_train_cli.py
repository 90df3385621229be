"""``cafeslim train`` through the command line: outputs, and errors that overwrite nothing.

Each command is a fresh process (torch + timm imports, a training epoch, three exports): the
tests on the trained folder are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cafeslim.supernet.checkpoint import capture_rng, save_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAST = ("--epochs", "1", "-b", "64", "--img-size", "16", "--device", "cpu", "--threads", "1")




def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    # Generous: a training epoch and three exports, on a shared machine.
    res = cli("train", "timm:test_resnet", *FAST, "--out", out, timeout=900)
    assert res.returncode == 0, res.stderr
    return out, res


@pytest.mark.slow
def test_model_target_writes_the_training_folder(trained):
    out, res = trained
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "model.pt", "model.pt2",
                 "model.onnx", "widths.json", "report.md", "curves.png"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "widths.json").read_text())
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert meta["top1_test"] == meta["trained"]["test_top1"] == record["test_top1"]
    assert meta["source"] == "timm:test_resnet" and meta["num_classes"] == 10
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 1
    assert f"{100 * record['test_top1']:.2f}%" in res.stdout
    assert "test top-1" in (out / "report.md").read_text()
    assert "ETA" in res.stderr  # the live progress bar


def test_target_that_is_nothing(tmp_path, cli, one_error_line):
    (tmp_path / "empty").mkdir()
    one_error_line(cli("train", tmp_path / "empty", *FAST), "neither", "run folder")
    one_error_line(cli("train", "no_such_model_xyz", *FAST), "unknown model")
    (tmp_path / "notes.txt").write_text("hello")  # a file that is no run, export or model
    one_error_line(cli("train", tmp_path / "notes.txt", *FAST), "neither")
    assert (tmp_path / "notes.txt").read_text() == "hello"


@pytest.mark.slow
def test_num_classes_builds_the_head_and_must_match_the_data(trained, tmp_path, cli, one_error_line):
    out, _ = trained
    one_error_line(cli("train", "timm:test_resnet", *FAST, "--num-classes", "7", "--out",
                       tmp_path / "seven"), "10 classes", "head has 7")
    assert not (tmp_path / "seven").exists()
    before = snapshot(out)
    one_error_line(cli("train", out, *FAST, "--num-classes", "5", "--out", tmp_path / "five"),
                   "--num-classes 5")
    assert snapshot(out) == before and not (tmp_path / "five").exists()


@pytest.mark.slow
def test_corrupt_and_foreign_checkpoints_overwrite_nothing(trained, tmp_path, cli, one_error_line):
    out, _ = trained
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    data = (corrupt / "last.pt").read_bytes()
    (corrupt / "last.pt").write_bytes(data[: len(data) // 2])
    before = snapshot(corrupt)
    one_error_line(cli("train", "timm:test_resnet", "--out", corrupt, "--resume"), "corrupt")
    assert snapshot(corrupt) == before
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    save_checkpoint(foreign / "last.pt", model={"w": torch.zeros(1)}, optimizer={},
                    rng=capture_rng(np.random.default_rng(0)), step=1, epoch=0, position=1,
                    fingerprint={"model": "timm:test_resnet"})  # a supernet's checkpoint
    before = snapshot(foreign)
    one_error_line(cli("train", "timm:test_resnet", "--out", foreign, "--resume"),
                   "not a cafeslim train checkpoint")
    assert snapshot(foreign) == before


@pytest.mark.slow
def test_data_with_other_classes_than_the_head(trained, tmp_path, cli, one_error_line):
    from PIL import Image

    out, _ = trained
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / cls / f"{i}.png")
    before = snapshot(out)
    one_error_line(cli("train", out, "--data", tmp_path / "data", *FAST), "3 classes", "head has 10")
    assert snapshot(out) == before and not (out / "train").exists()


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_weights(trained, tmp_path, cli):
    import time

    out, _ = trained
    run = tmp_path / "killed"
    # Checkpoints mid-epoch, so the kill lands inside one (the resume need not repeat the flag).
    proc = subprocess.Popen([sys.executable, "-m", "cafeslim", "train", "timm:test_resnet", *FAST,
                             "--out", str(run), "--ckpt-every", "3"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pt").is_file():
            try:
                if torch.load(run / "last.pt", weights_only=True)["step"] >= 3:
                    break
            except Exception:  # noqa: BLE001 - being replaced right now: look again
                pass
        time.sleep(0.05)
    proc.kill()
    assert proc.wait() == -9  # killed, not finished
    step = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 0 < step < 20 and not (run / "model.pt").exists()
    res = cli("train", "timm:test_resnet", "--out", run, "--resume", "--threads", "1", timeout=900)
    assert res.returncode == 0, res.stderr
    a = torch.load(run / "model.pt", weights_only=False).state_dict()
    b = torch.load(out / "model.pt", weights_only=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
