"""The max-max search under ``torchrun --nproc_per_node 2``: each rank scores its share.

Both ranks must end with the records, cache and result of one process searching alone, while
each evaluated (recalibrated and scored) only part of the width vectors, the two parts
disjoint and together exactly what the single process evaluated.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cafeslim.search.fitness import FunctionFitness
from cafeslim.search.parallel import share_scores

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from cafeslim.bins.make import make_bins
from cafeslim.config import TrainConfig
from cafeslim.data import build_data
from cafeslim.data.loaders import unsharded
from cafeslim.flops import FlopsModel
from cafeslim.graph import analyze
from cafeslim.models import create
from cafeslim.pipeline.objects import at_size
from cafeslim.search import Fitness
from cafeslim.search.searchers import EvolutionSearcher
from cafeslim.supernet import Supernet, distributed
from cafeslim.supernet.train import seed_everything

out = Path(sys.argv[1])
cfg = TrainConfig(batch_size=16, img_size=16, val_split=0.1, device="cpu", workers=0, seed=0)
with distributed.session("cpu") as info:
    seed_everything(0)
    model = at_size(create("timm:test_resnet", num_classes=10), 16)
    graph = analyze(model.model, model.example_input())
    fm = FlopsModel(graph)
    space = make_bins(graph, fm, offset=1)
    net = Supernet(model.model, graph, space)
    data = build_data("demo", model, cfg)
    fit = Fitness(net, space, unsharded(data.calib), data.val, recal_n=2, eval_n=3, flops_model=fm)
    mine = []
    evaluate = fit._evaluate
    fit._evaluate = lambda k: (mine.append(list(k)), evaluate(k))[1]
    res = EvolutionSearcher(fit, space, fm, 0.5 * fm.full, rng=0, population=6, iterations=3,
                            parents=2).run()
    cache = {str(list(k)): [r.top1, list(r.candidate_top1s), r.candidate] for k, r in fit.cache.items()}
    doc = {"best": list(res.best_k), "top1": res.best.top1, "spec": {str(g): list(map(int, v)) for g, v in res.best.best_spec.items()},
           "history": [{k: v for k, v in r.items() if k not in ("recal_s", "eval_s")} for r in res.history],
           "cache": cache, "mine": mine, "widths": fit.stats.widths, "hits": fit.stats.hits}
    (out / f"rank{info.rank}-of{info.world_size}.json").write_text(json.dumps(doc))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_split_the_scoring_and_find_what_one_process_finds(tmp_path):
    import json

    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(tmp_path / "worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ref, r0, r1 = (json.loads((tmp_path / f"rank{n}.json").read_text())
                   for n in ("0-of1", "0-of2", "1-of2"))
    for doc in (r0, r1):  # the same search, record for record, as one process
        for key in ("best", "top1", "spec", "history", "cache", "widths", "hits"):
            assert doc[key] == ref[key], key
    # ... with the evaluations split: disjoint shares that add up to the single process's.
    a, b = {tuple(k) for k in r0["mine"]}, {tuple(k) for k in r1["mine"]}
    assert a and b and not a & b
    assert a | b == {tuple(k) for k in ref["mine"]} and len(ref["mine"]) == len(a) + len(b)
    assert len(set(map(tuple, [r["k"] for r in ref["history"]]))) > 6  # several generations
    assert len({r["top1"] for r in ref["history"]}) > 1  # the scores really differ


def test_share_scores_is_a_no_op_in_one_process():
    class Space:
        groups = [0, 1]

    fit = FunctionFitness(lambda k: float(k.sum()), Space())
    assert share_scores(fit, [(1, 2), (3, 4)]) == 0
    assert fit.cache == {} and fit.stats.widths == 0


@pytest.mark.slow
def test_cli_search_under_torchrun_writes_one_run_folder(tmp_path):
    import json

    import torch

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "cafeslim",
           "search", "timm:test_resnet", "--flops", "50%", "--epochs", "1", "--img-size", "16",
           "-b", "32", "--population", "4", "--iterations", "2", "--recal-batches", "1",
           "--eval-batches", "2", "--device", "cpu", "--out", str(run)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("D_val score:") == 1  # rank 0's summary only
    result = json.loads((run / "result.json").read_text())
    lines = (run / "search.jsonl").read_text().splitlines()
    assert len(lines) == result["budgets"][0]["evaluated"] > 4  # every record written once
    assert len({tuple(json.loads(x)["k"]) for x in lines}) == len(lines)
    assert torch.load(run / "last.pt", weights_only=False)["extra"]["world_size"] == 2
