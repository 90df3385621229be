"""Search quality (issue 8 item 7): does the search beat the uniform shrink, and does the
supernet rank widths as their stand-alone training does?

(a) **The paper's comparison.** Uniform, Random, Fixed (r = 0) with evolution, CafeNet-R
    (random searcher) and CafeNet-E (evolution), each run exactly as ``cafeslim search`` runs
    it (:func:`cafeslim.pipeline.run_search`), every chosen width then retrained from scratch
    with the same recipe (:func:`cafeslim.training.train_target`, ``init="scratch"``, the
    ``cafeslim train`` path) over S seeds: mean ± sd of the **test** top-1 per method.
(b) **Ranking quality.** N width vectors drawn in each budget's window, each trained
    stand-alone (the same ``scratch`` initialisation and :func:`cafeslim.train`, a short
    recipe) and scored by each supernet's max-max fitness (D_val top-1 after BN
    recalibration, exactly what the search maximises): Kendall τ between the two, with a
    bootstrap 95% interval over the N vectors, for the fixed (r = 0) supernet, the CafeNet
    (r = 1) supernet and every ``--sampling`` mode of the min-min step.

(c), (d) (issue 11) **What the ranking needs.** τ of the CafeNet supernet's fitness with fewer
    BN recalibration batches (``--recal-sweep``) or fewer D_val batches (``--eval-sweep``).

Supernets are trained once per setting and shared: CafeNet-R searches the CafeNet-E supernet,
and (b) scores the same supernets as (a). Every unit of work (a run, a retraining, a
stand-alone training, a scoring) is cached as JSON under ``--work``, so an interrupted or
extended benchmark (more seeds, another method) reruns only what is missing. Independent units
run in ``--jobs`` single-threaded processes.

The stand-alone results (width vectors, channels, FLOPs, test top-1 per seed) are also written
to ``benchmarks/results/standalone-<model>-<data>.json``; :func:`load_standalone` reads them
back and :func:`kendall_tau` ranks any other fitness against them.

Usage:
    python benchmarks/search_quality.py --quick                        # smoke test, minutes
    python benchmarks/search_quality.py --budgets 20%,50% --seeds 3 --jobs 2
    python benchmarks/search_quality.py --model timm:mobilenetv3_small_050 --data DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared machine: do not spin on cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Table name -> (SearchConfig.method, searcher); the supernet ones share runs by method+sampling.
METHODS = {"Uniform": ("uniform", "evolution"), "Random": ("random", "evolution"),
           "Fixed-E": ("fixed", "evolution"), "CafeNet-R": ("cafenet", "random"),
           "CafeNet-E": ("cafenet", "evolution")}
REPORT_ONLY = [False]
QUICK = {"budgets": "50%", "seeds": 2, "n_vectors": 6, "epochs": 3, "standalone_epochs": 2,
         "supernet_epochs": 2}


# ----------------------------------------------------------------------------- statistics
def kendall_tau(fitness_values: Sequence[float], standalone_acc: Sequence[float]) -> float:
    """Kendall's τ-b between supernet fitness and stand-alone accuracy (ties counted as such).

    Example:
        >>> kendall_tau([0.1, 0.2, 0.3], [0.5, 0.7, 0.6])
        0.3333333333333333
    """
    x, y = np.asarray(fitness_values, float), np.asarray(standalone_acc, float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("kendall_tau needs two sequences of the same length >= 2")
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = np.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
    return float(np.sum(dx * dy) / denom) if denom else float("nan")


def tau_interval(fitness_values: Sequence[float], standalone_acc: Sequence[float],
                 n_boot: int = 2000, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap 95% interval of :func:`kendall_tau`, resampling the vectors.

    Example:
        >>> lo, hi = tau_interval(range(10), range(10)); lo == hi == 1.0
        True
    """
    x, y = np.asarray(fitness_values, float), np.asarray(standalone_acc, float)
    rng = np.random.default_rng(seed)
    taus = [kendall_tau(x[s], y[s]) for s in rng.integers(0, len(x), (n_boot, len(x)))]
    taus = np.asarray([t for t in taus if np.isfinite(t)])
    if not len(taus):
        return float("nan"), float("nan")
    return float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))


def load_standalone(path: Optional[Path] = None, model: str = "timm:test_resnet",
                    data: str = "demo-hard") -> List[Dict[str, Any]]:
    """The stand-alone results: one dict per vector (``budget``, ``k``, ``widths``, ``flops``,
    ``top1`` per seed, ``mean``), from ``path`` or the default file of ``model`` and ``data``.

    Example:
        >>> rows = load_standalone()                                         # doctest: +SKIP
        >>> kendall_tau([my_fitness(r["k"]) for r in rows], [r["mean"] for r in rows])  # doctest: +SKIP
    """
    doc = json.loads(Path(path or standalone_path(model, data)).read_text())
    return [{**r, "mean": float(np.mean(r["top1"]))} for r in doc["vectors"]]


def standalone_path(model: str, data: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}-{Path(data).name}")
    return RESULTS / f"standalone-{slug}.json"


# ----------------------------------------------------------------------------- work units
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cached(path: Path, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """``fn()``'s result, computed once: cached in ``path``, guarded by ``path.lock`` so that
    several benchmark processes can share one work folder (a unit another live process is
    computing is waited for; the lock of a dead process is taken over)."""
    if REPORT_ONLY[0]:  # --report-only: what is there, nothing computed
        return json.loads(path.read_text()) if path.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    while not path.is_file():
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and not _alive(owner):
                lock.unlink(missing_ok=True)
            else:
                time.sleep(10)
            continue
        try:
            os.write(fd, str(os.getpid()).encode())
            t0 = time.perf_counter()
            out = {**fn(), "seconds": round(time.perf_counter() - t0, 1)}
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(out))
            tmp.replace(path)
            return out
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)
    return json.loads(path.read_text())


def _settings(a: Dict[str, Any], method: str, searcher: str, sampling: Optional[str],
              extra: Optional[Dict[str, Any]] = None) -> Any:
    from cafeslim.config import resolve_settings

    train = {"seed": 0, "epochs": a["supernet_epochs"], "workers": 0, "device": "cpu", **(extra or {})}
    if sampling is not None:
        train["sampling"] = sampling
    return resolve_settings(a["model"], None, a["data"], {
        "train": train, "search": {"flops": a["budgets"], "method": method, "searcher": searcher}})


def unit_run(a: Dict[str, Any], name: str, method: str, searcher: str,
             sampling: Optional[str], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``cafeslim search`` of one setting in ``WORK/runs/NAME`` (cached)."""
    from cafeslim.errors import CafeslimError
    from cafeslim.pipeline import run_search

    run_dir = Path(a["work"]) / "runs" / name

    def go() -> Dict[str, Any]:
        settings = _settings(a, method, searcher, sampling, extra)
        try:  # an interrupted benchmark: continue the run where it stopped
            res = run_search(settings, run_dir, resume=(run_dir / "config.yaml").is_file(),
                             progress=False).result
        except CafeslimError:
            res = run_search(settings, run_dir, force=True, progress=False).result
        return {"run_dir": str(run_dir), "train": res.get("train"), "search": res.get("search"),
                "full_flops": res["full"]["flops"],
                "budgets": [{k: b[k] for k in ("budget", "top1", "flops", "k")} for b in res["budgets"]]}

    return _cached(Path(a["work"]) / "units" / f"run-{name}.json", go)


def unit_research(a: Dict[str, Any], name: str, base: str, searcher: str,
                  src_work: Optional[str] = None) -> Dict[str, Any]:
    """Search the trained supernet of run ``base`` again: with another searcher (CafeNet-R),
    or (``src_work``: another benchmark's work folder) under this benchmark's budgets.

    The second is exact when the supernet's training does not depend on the budgets (every
    ``--sampling uniform`` run): it is then the very supernet a run with these budgets trains.
    Waits for that run to finish when it is still training."""
    import shutil

    from cafeslim.config import dump_yaml, load_settings
    from cafeslim.pipeline.objects import build
    from cafeslim.pipeline.report import result_json
    from cafeslim.pipeline.rundir import RESULT, STATE, write_text
    from cafeslim.pipeline.stages import search_stage
    from cafeslim.supernet import Supernet
    from cafeslim.supernet.checkpoint import load_checkpoint

    src = Path(src_work or a["work"]) / "runs" / base
    run_dir = Path(a["work"]) / "runs" / name

    def go() -> Dict[str, Any]:
        from dataclasses import replace

        while not (src.parent.parent / "units" / f"run-{base}.json").is_file():
            time.sleep(20)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        s = load_settings(src)
        s = replace(s, search=replace(s.search, searcher=searcher, flops=a["budgets"]))
        b = build(s)
        for f in ("last.pt", "graph.json", "bins.json", "metrics.jsonl"):
            if (src / f).exists():
                shutil.copy(src / f, run_dir / f)
        dump_yaml(s.to_dict(), run_dir / "config.yaml")
        net = Supernet(b.info.model, b.graph, b.space)
        net.load_state_dict(load_checkpoint(run_dir / "last.pt")["model"])
        t0 = time.perf_counter()
        results, search = search_stage(b, net, b.space, run_dir, b.budgets, run_dir / STATE,
                                       False, False, None)
        base_res = json.loads((src / RESULT).read_text())
        out = {"results": results, "checkpoints": ["last.pt"] * len(results),
               "train": base_res.get("train"), "search": search}
        res = result_json(b, out, time.perf_counter() - t0)
        write_text(run_dir / RESULT, json.dumps(res, indent=2))
        return {"run_dir": str(run_dir), "search": search,
                "budgets": [{k: r[k] for k in ("budget", "top1", "flops", "k")} for r in res["budgets"]]}

    return _cached(Path(a["work"]) / "units" / f"run-{name}.json", go)


def _recipe(a: Dict[str, Any], epochs: int, seed: int) -> Any:
    from cafeslim.config import RetrainConfig

    return RetrainConfig(epochs=epochs, seed=seed, init="scratch", teacher="none", workers=0,
                         device="cpu")


def unit_retrain(a: Dict[str, Any], run: str, budget: Optional[str], seed: int) -> Dict[str, Any]:
    """``cafeslim train RUN --budget B --seed S --init scratch`` (cached); run ``full``: the
    original model itself (``cafeslim train MODEL``), the reference the budgets shrink."""
    from cafeslim.training.run import train_target

    # The full model does not depend on the budgets: one cache for every benchmark of the model.
    work = Path(a["work"]) if run != "full" else Path(a["work"]).parent / f"full-{a['slug']}-e{a['epochs']}"
    tag = f"{run}-{(budget or 'full').replace('%', 'pct')}-s{seed}"
    target = a["model"] if run == "full" else str(work / "runs" / run)

    def go() -> Dict[str, Any]:
        out = train_target(target, _recipe(a, a["epochs"], seed), budget=budget, data=a["data"],
                           out_dir=work / "train" / tag, force=True, formats=(), progress=False)
        return {"test_top1": out.outcome.test_top1, "holdout_top1": out.outcome.holdout_top1,
                "images_per_s": out.outcome.images_per_s}

    return _cached(work / "units" / f"train-{tag}.json", go)


def unit_standalone(a: Dict[str, Any], vector: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """Train one width vector stand-alone from scratch (the ``cafeslim train`` student)."""
    from cafeslim.data import build_data
    from cafeslim.graph import spec_from_json
    from cafeslim.training import train
    from cafeslim.training.target import Target, build_student

    def go() -> Dict[str, Any]:
        t = Target("run", vector["id"], None, a["model"], data=a["data"], img_size=a["img_size"],
                   spec=spec_from_json(vector["spec"]))
        cfg = _recipe(a, a["standalone_epochs"], seed)
        model, info, _, _ = build_student(t, "scratch", 10 if a["classes"] is None else a["classes"],
                                          a["img_size"], seed)
        data = build_data(a["data"], info, cfg)
        out = train(model, data, cfg, progress=False)
        return {"test_top1": out.test_top1}

    return _cached(Path(a["work"]) / "units" / f"alone-{vector['id']}-s{seed}.json", go)


def unit_score(a: Dict[str, Any], run: str, vectors: List[Dict[str, Any]],
               recal: Optional[int] = None, evalb: Optional[int] = None) -> Dict[str, Any]:
    """Max-max fitness (the search's own :class:`~cafeslim.search.Fitness`) of every vector;
    ``recal``: with that many BN recalibration batches instead of the run's own; ``evalb``:
    on the first that many D_val batches instead of all of D_val."""
    from dataclasses import replace

    from cafeslim.config import load_settings
    from cafeslim.pipeline.objects import build, make_fitness
    from cafeslim.supernet import Supernet
    from cafeslim.supernet.checkpoint import load_checkpoint

    run_dir = Path(a["work"]) / "runs" / run

    def go() -> Dict[str, Any]:
        s = load_settings(run_dir)
        if recal is not None:
            s = replace(s, search=replace(s.search, recal_batches=recal))
        if evalb is not None:
            s = replace(s, search=replace(s.search, eval_batches=evalb))
        b = build(s)
        net = Supernet(b.info.model, b.graph, b.space)
        net.load_state_dict(load_checkpoint(run_dir / "last.pt")["model"])
        fit = make_fitness(b, net)
        scores = {}
        for v in vectors:
            if b.space.widths(v["k"]) != {int(g): w for g, w in v["widths"].items()}:
                raise RuntimeError(f"{run}: the bins differ from the sampled vectors' space")
            scores[v["id"]] = float(fit(v["k"]).top1)
        return {"fitness": scores}

    tag = ("" if recal is None else f"-r{recal}") + ("" if evalb is None else f"-v{evalb}")
    return _cached(Path(a["work"]) / "units" / f"score-{run}-n{len(vectors)}{tag}.json", go)


# ----------------------------------------------------------------------------- orchestration
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _map(jobs: int, calls: List[Tuple[Callable[..., Any], tuple]]) -> List[Any]:
    """Run ``fn(*args)`` for every call, in ``jobs`` single-threaded processes (order kept)."""
    if jobs <= 1:
        _init_worker()
        return [fn(*args) for fn, args in calls]
    import multiprocessing

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = [pool.submit(fn, *args) for fn, args in calls]
        return [f.result() for f in futures]


def sampling_modes() -> Tuple[List[str], Optional[str]]:
    """The ``--sampling`` choices of the min-min step and the default ([], None: none yet)."""
    from cafeslim.config import MinMinConfig, choices

    if "sampling" not in {f.name for f in fields(MinMinConfig)}:
        return [], None
    return list(choices(MinMinConfig, "sampling")), MinMinConfig().sampling


def method_available(method: str) -> bool:
    from cafeslim.config import SearchConfig, choices

    return method in choices(SearchConfig, "method")


def sample_vectors(a: Dict[str, Any], sampling: Optional[str]) -> List[Dict[str, Any]]:
    """``n_vectors`` width vectors per budget, uniform in the window of the CafeNet space."""
    from cafeslim.bins import random_widths
    from cafeslim.graph import spec_to_json
    from cafeslim.pipeline.objects import build

    b = build(_settings(a, "cafenet", "evolution", sampling), with_data=False)
    a["img_size"] = b.settings.train.img_size
    out = []
    for i, (name, budget) in enumerate(zip(b.settings.search.budgets, b.budgets)):
        K = random_widths(b.space, b.fm, budget, a["n_vectors"], np.random.default_rng([7, i]),
                          low=b.settings.search.low)
        for j, k in enumerate(np.unique(K, axis=0)):
            k = [int(v) for v in k]
            out.append({"id": f"{name.replace('%', 'pct')}-{j}", "budget": name, "k": k,
                        "widths": {str(g): int(w) for g, w in b.space.widths(k).items()},
                        "flops": float(b.fm.flops(b.space.widths(k))),
                        "spec": spec_to_json(b.space.fixed_spec(k))})
    return out


def run_all(a: Dict[str, Any]) -> Dict[str, Any]:
    """Every unit of (a) and (b), cached under ``a["work"]``; returns the results document."""
    modes, default = sampling_modes()
    if a["sampling"] is not None:
        modes = [m for m in modes if m in a["sampling"].split(",")]
    # "cafenet" is the default sampling (what the other methods of (a) use); the other modes
    # get a CafeNet-E row of their own. Named so, the runs of a benchmark made before
    # --sampling existed are reused.
    sup = {"cafenet": ("cafenet", "evolution", default),
           **{f"cafenet-{m}": ("cafenet", "evolution", m) for m in modes if m != default}}
    base = "cafenet"
    runs = {"uniform": ("uniform", "evolution", None), "fixed": ("fixed", "evolution", default),
            **sup}
    if method_available("random"):
        runs["random"] = ("random", "evolution", None)
    for sb in a["select_batch"]:  # issue 11: min-min selection on a fraction of the batch
        sup[f"cafenet-select{sb:g}"] = runs[f"cafenet-select{sb:g}"] = (
            "cafenet", "evolution", default, {"select_batch": sb})
    vectors = sample_vectors(a, default)
    a["all_vectors"] = list(vectors)  # the scoring cache is keyed by the number sampled
    seeds = list(range(a["standalone_seeds"]))
    shared = {n for n, spec in runs.items() if a["supernets_from"] and len(spec) == 3
              and spec[0] != "random"
              and spec[0] != "uniform" and (spec[2] or "uniform") == "uniform"}
    # Shared supernets last: they may wait for the other benchmark to finish training them.
    order = [n for n in runs if n not in shared] + sorted(shared)
    phase1 = [(unit_run, (a, n, *runs[n])) if n not in shared else
              (unit_research, (a, n, n, runs[n][1], a["supernets_from"])) for n in order]
    phase1 += [(unit_standalone, (a, v, s)) for v in vectors for s in seeds]
    done = _map(a["jobs"], phase1)
    run_out = {n: d for n, d in zip(order, done[:len(runs)]) if d}
    for v, i in zip(vectors, range(len(runs), len(done), len(seeds))):
        v["top1"] = [r["test_top1"] for r in done[i:i + len(seeds)] if r]
    vectors = [v for v in vectors if v["top1"]]  # (--report-only: the trained ones)
    research = unit_research(a, "cafenet-R", base, "random") if base in run_out else None
    if research:
        run_out["cafenet-R"] = research
    table = {"Uniform": "uniform", "Random": "random", "Fixed-E": "fixed",
             "CafeNet-R": "cafenet-R", "CafeNet-E": base,
             # item 6: is another min-min sampling better for the user's final model, too?
             **{f"CafeNet-E, sampling {n.split('-', 1)[1]}": n for n in sup
                if n != base and "select" not in n}}
    table = {k: v for k, v in table.items() if v in run_out}
    budgets = [b.strip() for b in a["budgets"].split(",")]
    phase2 = [(unit_retrain, (a, run, b, s)) for run in table.values() for b in budgets
              for s in range(a["seeds"])]
    scored = [r for r in ["fixed"] + list(sup) if r in run_out]
    phase2 += [(unit_score, (a, run, a["all_vectors"])) for run in scored]
    phase2 += [(unit_retrain, (a, "full", None, s)) for s in range(a["full_seeds"])]
    sweep = a["recal_sweep"] if base in run_out else []
    vsweep = a["eval_sweep"] if base in run_out else []
    phase2 += [(unit_score, (a, base, a["all_vectors"], r)) for r in sweep]
    phase2 += [(unit_score, (a, base, a["all_vectors"], None, v)) for v in vsweep]
    done = _map(a["jobs"], phase2)
    n_sw = len(sweep) + len(vsweep)
    swept = done[len(done) - n_sw:]
    recal = {r: d["fitness"] for r, d in zip(sweep, swept) if d}
    evals = {v: d["fitness"] for v, d in zip(vsweep, swept[len(sweep):]) if d}
    done = done[:len(done) - n_sw]
    n_tr = len(table) * len(budgets) * a["seeds"]
    retrain = {}
    for i, (run, b, s) in enumerate((r, b, s) for r in table.values() for b in budgets
                                    for s in range(a["seeds"])):
        retrain.setdefault(run, {}).setdefault(b, [])
        if done[i]:
            retrain[run][b].append(done[i]["test_top1"])
    scores = {run: d["fitness"] for run, d in zip(scored, done[n_tr:n_tr + len(scored)]) if d}
    retrain["full"] = [d["test_top1"] for d in done[n_tr + len(scored):] if d]
    return {"runs": run_out, "table": table, "retrain": retrain, "vectors": vectors,
            "scores": scores, "recal_scores": recal, "eval_scores": evals, "budgets": budgets,
            "default_sampling": default}


def _pct(values: Sequence[float], want: int = 0) -> str:
    v = 100 * np.asarray(values, float)
    if not len(v):
        return "–"
    out = f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"
    return out + (f" (n={len(v)})" if len(v) < want else "")


def tables(doc: Dict[str, Any]) -> str:
    """The markdown tables of (a) and (b)."""
    lines = ["### (a) Test top-1 of each method's width, retrained from scratch (mean ± sd over "
             f"{doc['args']['seeds']} seeds, {doc['args']['epochs']} epochs)", "",
             "| method | " + " | ".join(f"{b}: FLOPs | {b}: D_val score | {b}: test top-1 %"
                                       for b in doc["budgets"]) + " |",
             "|---|" + "---:|---:|---:|" * len(doc["budgets"])]
    for name, run in doc["table"].items():
        if run not in doc["runs"]:
            continue
        cells = []
        for i, b in enumerate(doc["budgets"]):
            r = doc["runs"][run]["budgets"][i]
            score = "not trained" if run == "uniform" else f"{100 * r['top1']:.1f}"
            cells += [f"{r['flops'] / 1e6:.3f}M", score,
                      _pct(doc["retrain"].get(run, {}).get(b, []), doc["args"]["seeds"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if doc["retrain"].get("full"):
        full = doc["runs"]["uniform"]["full_flops"] if "full_flops" in doc["runs"]["uniform"] else None
        lines.append("| Full model (100% FLOPs) | " + " | ".join(
            [f"{full / 1e6:.3f}M" if full else "", "", _pct(doc["retrain"]["full"], doc["args"]["full_seeds"])]
            * len(doc["budgets"])) + " |")
    lines += ["", "### (b) Kendall τ, supernet max-max fitness vs stand-alone test top-1 "
              f"({doc['args']['standalone_epochs']} epochs), bootstrap 95% interval", "",
              "| supernet | " + " | ".join(doc["budgets"]) + " | all budgets |",
              "|---|" + "---:|" * (len(doc["budgets"]) + 1)]
    names = {"fixed": "Fixed (r = 0)", "cafenet": f"CafeNet (r = 1), sampling "
             f"{doc.get('default_sampling') or 'uniform (Eq. 1)'}"}
    for run, tau in doc["tau"].items():
        what = run.replace("cafenet-", "").replace("select", "select_batch ")
        label = names.get(run, f"CafeNet (r = 1), {'' if 'select' in run else 'sampling '}{what}")
        lines.append(f"| {label} | " + _tau_cells(tau))
    sweeps = (("tau_recal", "(c)", "the BN recalibration batches it uses", "recalibration batches"),
              ("tau_eval", "(d)", "the D_val batches it is scored on", "D_val batches"))
    for key, tag, what, column in sweeps:
        if not doc.get(key):
            continue
        lines += ["", f"### {tag} Kendall τ of the CafeNet (r = 1) supernet's fitness against {what}",
                  "", f"| {column} | " + " | ".join(doc["budgets"]) + " | all budgets |",
                  "|---:|" + "---:|" * (len(doc["budgets"]) + 1)]
        for n, tau in sorted(doc[key].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {n} | " + _tau_cells(tau))
    return "\n".join(lines)


def _tau_cells(tau: Dict[str, Dict[str, float]]) -> str:
    return " | ".join(f"{t['tau']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}] (n={t['n']})"
                      for t in tau.values()) + " |"


def taus(doc: Dict[str, Any], scores: Optional[Dict[Any, Dict[str, float]]] = None
         ) -> Dict[str, Dict[str, Dict[str, float]]]:
    """τ with its interval per supernet (or per recalibration count), per budget and overall."""
    out = {}
    for run, fit in (doc["scores"] if scores is None else scores).items():
        per = {}
        for b in doc["budgets"] + ["all"]:
            vs = [v for v in doc["vectors"] if b in ("all", v["budget"]) and v["id"] in fit]
            if len(vs) < 3:
                per[b] = {"tau": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": len(vs)}
                continue
            f, acc = [fit[v["id"]] for v in vs], [float(np.mean(v["top1"])) for v in vs]
            lo, hi = tau_interval(f, acc)
            per[b] = {"tau": kendall_tau(f, acc), "lo": lo, "hi": hi, "n": len(vs)}
        out[str(run)] = per
    return out


def parse(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="timm:test_resnet")
    p.add_argument("--data", default="demo-hard", help="demo, demo-hard or a folder")
    p.add_argument("--budgets", default="20%,50%")
    p.add_argument("--seeds", type=int, default=3, help="retraining seeds per method (a)")
    p.add_argument("--n-vectors", type=int, default=10, help="stand-alone vectors per budget (b)")
    p.add_argument("--standalone-seeds", type=int, default=1)
    p.add_argument("--full-seeds", type=int, default=None,
                   help="retraining seeds of the full model (default: --seeds)")
    p.add_argument("--epochs", type=int, default=10, help="retraining epochs (a)")
    p.add_argument("--standalone-epochs", type=int, default=6, help="stand-alone epochs (b)")
    p.add_argument("--supernet-epochs", type=int, default=None,
                   help="supernet epochs (default: cafeslim search's default for the data)")
    p.add_argument("--sampling", default=None,
                   help="comma-separated --sampling modes for (b) (default: all)")
    p.add_argument("--select-batch", default="", help="comma-separated select_batch values: a "
                   "CafeNet supernet trained with each, ranked in (b)")
    p.add_argument("--recal-sweep", default="", help="comma-separated recalibration batch "
                   "counts: τ of the CafeNet supernet's fitness with each (c)")
    p.add_argument("--eval-sweep", default="", help="comma-separated D_val batch counts: τ of "
                   "the CafeNet supernet's fitness scored on the first that many D_val batches (d)")
    p.add_argument("--jobs", type=int, default=1, help="single-threaded worker processes")
    p.add_argument("--supernets-from", default=None, metavar="WORK",
                   help="reuse the budget-independent supernets (fixed, and CafeNet with "
                        "--sampling uniform) another benchmark's work folder trains")
    p.add_argument("--work", default=None, help="cache folder (default runs/search_quality/...)")
    p.add_argument("--json", default=None, help="results file (default benchmarks/results/...)")
    p.add_argument("--quick", action="store_true", help="a smoke test: " + json.dumps(QUICK).replace("%", "%%"))
    p.add_argument("--report-only", action="store_true",
                   help="tables from what the work folder holds; compute nothing")
    a = vars(p.parse_args(argv))
    if a.pop("quick"):
        a.update(QUICK)
    slug = standalone_path(a["model"], a["data"]).stem.replace("standalone-", "")
    a["slug"] = slug
    tag = f"{slug}-{a['budgets'].replace('%', 'pct').replace(',', '_')}-e{a['epochs']}"
    a["work"] = a["work"] or str(Path("runs") / "search_quality" / tag)
    a["json"] = a["json"] or str(RESULTS / f"search_quality-{tag}.json")
    a["classes"] = None
    a["select_batch"] = [float(x) for x in a["select_batch"].split(",") if x.strip()]
    a["recal_sweep"] = [int(x) for x in a["recal_sweep"].split(",") if x.strip()]
    a["eval_sweep"] = [int(x) for x in a["eval_sweep"].split(",") if x.strip()]
    a["full_seeds"] = a["seeds"] if a["full_seeds"] is None else a["full_seeds"]
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/search_quality.py " + " ".join(map(shlex.quote, argv))
    print(command, flush=True)
    a = parse(argv)
    REPORT_ONLY[0] = a["report_only"]
    if a["report_only"]:
        a["jobs"] = 1
    t0 = time.perf_counter()
    doc = run_all(a)
    doc["tau"] = taus(doc)
    doc["tau_recal"] = taus(doc, doc["recal_scores"])
    doc["tau_eval"] = taus(doc, doc["eval_scores"])
    a.pop("all_vectors", None)
    doc.update(command=command, args=a, seconds=round(time.perf_counter() - t0, 1))
    print(tables(doc))
    RESULTS.mkdir(exist_ok=True)
    Path(a["json"]).write_text(json.dumps(doc, indent=1))
    path = standalone_path(a["model"], a["data"])
    rows = {r["id"]: r for r in (json.loads(path.read_text())["vectors"] if path.is_file() else [])}
    rows.update({v["id"]: {k: v[k] for k in ("id", "budget", "k", "widths", "flops", "spec", "top1")}
                 for v in doc["vectors"]})  # other budgets' vectors are kept
    alone = {"model": a["model"], "data": a["data"], "img_size": a["img_size"],
             "recipe": {"epochs": a["standalone_epochs"], "init": "scratch"},
             "vectors": sorted(rows.values(), key=lambda r: r["id"])}
    path.write_text(json.dumps(alone, indent=1))
    print(f"\nwrote {a['json']} and {standalone_path(a['model'], a['data'])} "
          f"({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
