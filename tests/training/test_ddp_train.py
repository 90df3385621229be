"""``train`` under ``torchrun --nproc_per_node 2`` (gloo on CPU), launched as a user would.

Two ranks at ``-b 8`` must train what one process trains at ``-b 16`` (the same global batch:
the sampler gives the ranks the two halves of each of its batches, DDP averages their
gradients), up to fp32 reduction order; only rank 0 may write the training folder. The
equality is checked on a network without BatchNorm: BatchNorm normalises each rank's half
batch with its own statistics (as in timm without ``--sync-bn``, which CPU/gloo lacks), a
real difference rather than a rounding one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from torch import nn
from cafeslim.config import RetrainConfig
from cafeslim.data import build_data
from cafeslim.models import create
from cafeslim.pipeline.objects import at_size
from cafeslim.supernet import distributed
from cafeslim.training import train

out, batch = Path(sys.argv[1]), int(sys.argv[2])
cfg = RetrainConfig(epochs=1, batch_size=batch, img_size=16, device="cpu", workers=0, seed=0,
                    warmup_epochs=0.25, ckpt_every=7)
with distributed.session("cpu") as info:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    if info.rank == 1:  # DDP must start every rank from rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    data = build_data("demo", at_size(create("timm:test_resnet", num_classes=10), 16), cfg)
    res = train(model, data, cfg, out_dir=out / "train", progress=False, name="tiny")
    torch.save({"state": res.model.state_dict(), "initial": initial, "steps": res.steps,
                "losses": [r["loss"] for r in res.history], "test": res.test_top1},
               out / f"rank{info.rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
            str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    single = subprocess.run([sys.executable, str(worker), str(one), "16"], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    proc = subprocess.run(_torchrun(str(worker), str(two), "8"), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ref = torch.load(one / "rank0.pt", weights_only=True)
    r0, r1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert ref["steps"] == r0["steps"] == r1["steps"] > 50
    # Both ranks hold one model, although rank 1 started elsewhere.
    assert not torch.equal(r0["initial"]["0.weight"], r1["initial"]["0.weight"])
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # ... and it is the single process's, to fp32 reduction order; training moved it far more.
    for k, v in ref["state"].items():
        assert torch.allclose(r0["state"][k], v, rtol=1e-4, atol=1e-5), k
        assert not torch.allclose(ref["initial"][k], v, rtol=1e-2, atol=1e-3), k
    assert r0["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert abs(r0["test"] - ref["test"]) <= 1 / 359 + 1e-9  # at most one borderline digit
    # Only rank 0 wrote the folder, and the same files a single process writes.
    names = sorted(p.name for p in (one / "train").iterdir())
    assert sorted(p.name for p in (two / "train").iterdir()) == names
    assert names == ["best.pt", "last.pt", "metrics.jsonl"]
    assert len((two / "train" / "metrics.jsonl").read_text().splitlines()) == 1
    ckpt = torch.load(two / "train" / "last.pt", weights_only=False)
    assert ckpt["extra"]["world_size"] == 2 and ckpt["step"] == r0["steps"]
    assert all(torch.equal(ckpt["model"][k], r0["state"][k]) for k in r0["state"])


@pytest.mark.slow
def test_cli_train_under_torchrun(tmp_path):
    out = tmp_path / "t"
    fast = ("--epochs", "1", "-b", "32", "--img-size", "16", "--device", "cpu")
    proc = subprocess.run(_torchrun("-m", "cafeslim", "train", "timm:test_resnet", *fast,
                                    "--out", str(out)),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One summary (rank 0's), one training folder written once.
    assert proc.stdout.count("test top-1") == 1, proc.stdout
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "model.pt", "widths.json",
                 "weights.safetensors", "report.md"):
        assert (out / name).is_file(), name
    record = json.loads((out / "metrics.jsonl").read_text())
    assert torch.load(out / "last.pt", weights_only=False)["extra"]["world_size"] == 2
    assert record["step"] == 1294 // 64  # the global batch of 2 × 32 (demo: 1,294 D_tr digits)
    # The same folder again: refused once, by rank 0, and nothing overwritten.
    before = (out / "last.pt").read_bytes()
    again = subprocess.run(_torchrun("-m", "cafeslim", "train", "timm:test_resnet", *fast,
                                     "--out", str(out)),
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0
    lines = [x for x in again.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "not empty" in lines[0], again.stderr[-2000:]
    assert (out / "last.pt").read_bytes() == before
