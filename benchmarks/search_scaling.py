"""Max-max search wall time, 1 process × 1 thread against N processes × 1 thread (torchrun).

Takes a finished (or at least trained) ``cafeslim search`` run folder, rebuilds its objects and
supernet from ``config.yaml`` and ``last.pt`` and times only the search (the run's own
searcher settings, all its budgets) — once in one process and once under
``torchrun --nproc_per_node N`` (gloo), alternating ``--repeat`` times so that the load of a
shared machine hits both alike. Under torchrun each rank scores its share of every
generation (:mod:`cafeslim.search.parallel`). Prints the times, their ratio, whether the
results are identical, and the load average around each run.

    python benchmarks/search_scaling.py runs/test_resnet-50pct --nproc 2 --repeat 2 [--iterations 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(run: Path, out: Path, iterations: int) -> None:
    """One timed search on the run's supernet (every rank; rank 0 writes ``out``)."""
    from dataclasses import replace

    import torch

    torch.set_num_threads(1)
    from cafeslim.config import load_settings
    from cafeslim.pipeline.objects import build, make_fitness
    from cafeslim.search import search_with
    from cafeslim.supernet import Supernet, distributed
    from cafeslim.supernet.checkpoint import load_checkpoint

    with distributed.session("cpu") as info:
        b = build(load_settings(run))
        net = Supernet(b.info.model, b.graph, b.space)
        net.load_state_dict(load_checkpoint(run / "last.pt")["model"])
        fitness = make_fitness(b, net)
        distributed.barrier()
        t0 = time.perf_counter()
        cfg = b.settings.search
        cfg = replace(cfg, iterations=iterations) if iterations else cfg
        results = search_with(cfg, fitness, b.space, b.fm, b.budgets,
                              seed=b.settings.train.seed)
        distributed.barrier()
        seconds = time.perf_counter() - t0
        if info.main:
            out.write_text(json.dumps({
                "seconds": seconds, "world": info.world_size,
                "best": [list(r.best_k) for r in results], "top1": [r.best.top1 for r in results],
                "history": [[(h["k"], h["top1"]) for h in r.history] for r in results]}))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _once(run: Path, nproc: int, tmp: Path, iterations: int) -> dict:
    out = tmp / f"n{nproc}-{time.time_ns()}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    me = [str(Path(__file__).resolve()), "--worker", str(run), str(out),
          "--iterations", str(iterations)]
    cmd = [sys.executable, *me] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
        str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(_port()), *me]
    load0 = os.getloadavg()[0]
    # torchrun starts its workers in new sessions; with the kernel's autogroup scheduling
    # (sched_autogroup_enabled) a session is one CPU-share group, so the single process must
    # get its own session too, or it shares one group with whatever else this shell runs
    # (measured: 0.17 instead of about 0.5 when it did).
    subprocess.run(cmd, check=True, env=env, cwd=REPO, start_new_session=True)
    doc = json.loads(out.read_text())
    doc["load"] = (round(load0, 1), round(os.getloadavg()[0], 1))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=0,
                    help="evolution generations (default 0: the run's own setting)")
    ap.add_argument("--worker", nargs=2, metavar=("RUN", "OUT"))
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), args.iterations)
        return
    if args.run is None:
        ap.error("RUN is required")
    times = {1: [], args.nproc: []}
    docs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for n in ((1, args.nproc) if i % 2 == 0 else (args.nproc, 1)):
                doc = _once(args.run.resolve(), n, Path(tmp), args.iterations)
                times[n].append(doc["seconds"])
                docs.setdefault(n, doc)
                print(f"round {i + 1}: {n} process(es) × 1 thread: {doc['seconds']:.1f} s "
                      f"(load average {doc['load'][0]} → {doc['load'][1]})", flush=True)
    one, many = statistics.median(times[1]), statistics.median(times[args.nproc])
    same = all(docs[1][k] == docs[args.nproc][k] for k in ("best", "top1", "history"))
    print(f"median: 1 × 1 thread {one:.1f} s, {args.nproc} × 1 thread {many:.1f} s, "
          f"ratio {many / one:.2f}; identical result (best, top-1, every record): {same}")
    print(f"evaluated width vectors: {sum(len(h) for h in docs[1]['history'])}; "
          f"D_val score of the best: {docs[1]['top1']}; cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
