"""Exact resume: a run SIGKILLed at a random step and resumed ends with identical weights.

The interrupted run is a separate process killed with SIGKILL (no handler, no cleanup: as a
power cut or the OOM killer would), possibly in the middle of writing a checkpoint. The
uninterrupted reference and the resumed tail run in this process; every run uses one intra-op
thread, so CPU kernels are bit-reproducible between them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cafeslim.config import RunSettings, TrainConfig
from cafeslim.pipeline import start_run
from cafeslim.supernet import Supernet
from cafeslim.supernet.checkpoint import load_checkpoint
from cafeslim.supernet.train import train_supernet

REPO = Path(__file__).resolve().parents[2]
MODEL = "timm:test_resnet"
STEPS = 24
# 72 training images at batch 8: 9 steps per epoch, so the 24 steps cross two epoch boundaries
# and the kill lands mid-epoch or on a boundary. Extra sampled candidates and a partial
# selection batch make every step draw from the width RNG more than once.
CFG = TrainConfig(epochs=3, batch_size=8, img_size=32, val_split=0.95, device="cpu", workers=0,
                  log_every=1, ckpt_every=3, max_steps=STEPS, warmup_epochs=0.5, seed=3,
                  candidates=1, select_batch=0.5)

CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
from cafeslim.config import RunSettings, TrainConfig
from cafeslim.pipeline import start_run
from cafeslim.supernet import Supernet
from cafeslim.supernet.train import train_supernet
cfg = TrainConfig(**json.loads(sys.argv[2]))
b = start_run(RunSettings(sys.argv[3], train=cfg), sys.argv[1])
# The pause only makes the run long enough to be killed in flight; it changes no number.
train_supernet(Supernet(b.info.model, b.graph, b.space), b.space, b.data, cfg, sys.argv[1],
               progress=False, model_name=b.info.name,
               callback=lambda step, stats: time.sleep(0.15))
"""


def run_training(run: Path, resume: bool = False):
    """The training stage as ``cafeslim search`` runs it (the child does the same)."""
    b = start_run(RunSettings(MODEL, train=CFG), run, resume=resume)
    return train_supernet(Supernet(b.info.model, b.graph, b.space), b.space, b.data,
                          b.settings.train, run, resume=resume, progress=False,
                          model_name=b.info.name)


pytestmark = pytest.mark.usefixtures("one_thread")


def _start_child(tmp_path: Path, run: Path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "child.log", "wb")
    return subprocess.Popen([sys.executable, str(script), str(run), json.dumps(asdict(CFG)), MODEL],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _metrics(run: Path) -> list:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(l["step"], l["loss"], l["lr"], l["widths"], l["fixed_pattern"]) for l in lines]


def test_sigkill_at_a_random_step_then_resume_gives_identical_weights(tmp_path):
    killed = tmp_path / "killed"
    child = _start_child(tmp_path, killed)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "last.pt").exists():
            assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the child wrote no checkpoint in time"
            time.sleep(0.02)
        delay = random.uniform(0.0, 1.5)  # at a random step, maybe in the middle of a save
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL, "the child finished before it could be killed"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    at = load_checkpoint(killed / "last.pt")["step"]
    assert 3 <= at < STEPS and at % 3 == 0, f"checkpoint at step {at} (killed after {delay:.2f} s)"

    resumed = run_training(killed, resume=True)
    assert (resumed.resumed_from, resumed.steps) == (at, STEPS)
    reference = tmp_path / "reference"
    run_training(reference)

    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"resumed at step {at}: {len(different)} tensors differ, e.g. {different[:3]}"
    # Momentum buffers and the schedule too: the resumed run could go on training identically.
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == STEPS
    assert a["rng"]["numpy"] == b["rng"]["numpy"]
    # The log reads as one run: every step once, with the same losses, rates and widths.
    assert _metrics(reference) == _metrics(killed)
    assert not list(killed.glob(".last.pt.*.tmp"))  # a save torn by the kill is cleaned up


def _budget_training(run: Path, cfg: TrainConfig, resume: bool = False, callback=None):
    """Training with budget-aware sampling, its sampler built as ``cafeslim search`` does."""
    from cafeslim.bins.sampling import make_sampler
    from cafeslim.config import SearchConfig

    b = start_run(RunSettings(MODEL, train=cfg, search=SearchConfig(flops="50%")), run,
                  resume=resume)
    sampler = make_sampler(b.space, b.fm, b.budgets, b.settings.train, cfg.seed)
    net = Supernet(b.info.model, b.graph, b.space)
    return train_supernet(net, b.space, b.data, b.settings.train, run, resume=resume,
                          progress=False, model_name=b.info.name, callback=callback,
                          sampler=sampler)


def test_resume_is_exact_with_budget_sampling(tmp_path):
    from dataclasses import replace

    cfg = replace(CFG, max_steps=8, sampling="budget", candidates=0, select_batch=1.0)

    def stop(step, stats):
        if step == 5:
            raise KeyboardInterrupt  # Ctrl-C between two steps: last.pt of step 5

    with pytest.raises(KeyboardInterrupt):
        _budget_training(tmp_path / "cut", cfg, callback=stop)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 5
    resumed = _budget_training(tmp_path / "cut", cfg, resume=True)
    assert (resumed.resumed_from, resumed.steps) == (5, 8)
    _budget_training(tmp_path / "ref", cfg)
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("ref", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    # Every sampled width is inside the 50 % window: the logged mean FLOPs fraction is ~0.5.
    assert all(0.97 * 0.5 - 1e-6 <= l["flops_frac"] <= 0.5 + 1e-6 for l in lines)
    # The interrupting callback ran before step 5 was logged: every other line is the same.
    assert [m for m in _metrics(tmp_path / "ref") if m[0] != 5] == _metrics(tmp_path / "cut")
