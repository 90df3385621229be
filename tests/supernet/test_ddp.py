"""DDP with two gloo processes on CPU, launched by torchrun as a user would.

Both ranks must train the same sub-network every step (same widths, the same all-reduced
candidate losses, the same argmin) on different shards of the data, end with identical weights
even though rank 1 starts from perturbed ones, and only rank 0 may write the run folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from cafeslim.bins.make import make_bins
from cafeslim.config import TrainConfig
from cafeslim.data import build_data
from cafeslim.flops import FlopsModel
from cafeslim.graph import analyze
from cafeslim.models import create
from cafeslim.supernet import Supernet, distributed
from cafeslim.pipeline.objects import at_size
from cafeslim.supernet.train import seed_everything, train_supernet

run, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = TrainConfig(batch_size=8, img_size=32, val_split=0.9, device="cpu", workers=0, max_steps=3,
                  log_every=1, ckpt_every=2, seed=0)
with distributed.session(cfg.device) as info:
    assert info.world_size == 2 and info.backend == "gloo", info
    seed_everything(cfg.seed)
    model = at_size(create("timm:test_resnet", num_classes=10), 32)
    graph = analyze(model.model, model.example_input())
    space = make_bins(graph, FlopsModel(graph), offset=1)
    net = Supernet(model.model, graph, space)
    if info.rank == 1:  # DDP must start every rank from rank 0's weights
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    data = build_data("demo", model, cfg)
    data.sampler.set_epoch(0)
    shard = [i for i, _ in data.sampler]
    steps = []
    result = train_supernet(net, space, data, cfg, run, progress=False, model_name=model.name,
                            callback=lambda s, st: steps.append(
                                (s, list(st.widths), st.chosen, list(st.candidate_losses))))
    torch.save({"state": net.state_dict(), "initial": initial, "steps": steps, "shard": shard,
                "result_steps": result.steps}, out / f"rank{info.rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_train_the_same_subnetworks_and_weights(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(tmp_path / "worker.py"), str(run), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["result_steps"] == r1["result_steps"] == 3
    # Same widths, same all-reduced selection losses, same chosen candidate: one sub-network.
    assert r0["steps"] == r1["steps"]
    assert all(len(losses) > 1 for _, _, _, losses in r0["steps"])  # selection really ran
    # ... trained on different halves of the data.
    assert len(r0["shard"]) == len(r1["shard"]) and not set(r0["shard"]) & set(r1["shard"])
    # Identical weights and buffers after the steps, although rank 1 started elsewhere.
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert not torch.equal(r0["initial"]["conv1.0.weight"], r1["initial"]["conv1.0.weight"])
    assert not torch.equal(r0["state"]["conv1.0.weight"], r0["initial"]["conv1.0.weight"])
    # Only rank 0 wrote the run folder; its checkpoint holds the final shared weights.
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "metrics.jsonl"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["extra"]["world_size"] == 2
    assert all(torch.equal(ckpt["model"][k], r0["state"][k]) for k in r0["state"])
