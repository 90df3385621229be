"""Zoo coverage: ``cafeslim check`` over every torchvision classification model and the
smallest model of every timm family, each in its own process with a time limit.

Writes ``docs/coverage.md`` (a row per model, totals) and keeps raw results in
``benchmarks/zoo_results.jsonl`` so that an interrupted run resumes where it stopped.

    python benchmarks/zoo.py --jobs 2                  # everything (about an hour on 2 cores)
    python benchmarks/zoo.py --only tv:resnet50 --only timm:vit_tiny_patch16_224 --fresh
    python benchmarks/zoo.py --report-only             # rebuild docs/coverage.md from the jsonl
    python benchmarks/zoo.py --stale                   # rerun rows of the older format only
    python benchmarks/zoo.py --json-only               # add the inspect/inspect-bins --json check
    python benchmarks/zoo.py --kinds detection,segmentation,video,flow --jobs 1
    python benchmarks/zoo.py --kinds video --only tv:r3d_18 --img-size 56

``--kinds`` covers torchvision's other model kinds instead (results in
``benchmarks/zoo_kinds_results.jsonl``, one table per kind in the report); a detection model is
checked on its traced backbone plus the ``final_outputs`` of the whole model.

Each model also runs ``cafeslim inspect MODEL --json`` and ``cafeslim inspect-bins MODEL --json``,
whose stdout must be exactly one JSON document too (``json_outputs`` in the results line).

Each model runs ``cafeslim check MODEL --json`` as a subprocess and its whole stdout is
parsed as one JSON document, so anything else printed there is an error, not lost. Lines of
``zoo_results.jsonl`` carry the report (``status``, per-property ``statuses``, ``sensitivity``)
plus ``check`` (the overall status), ``status`` (``ok``/``error: ...``/``timeout``) and
``seconds``; lines of the older, boolean-only format are still read.

A timm *family* is the leading run of letters of the model name (``resnet50d`` and
``resnet152`` are family ``resnet``; ``resnetv2_50`` is ``resnetv``); its representative is
the model with the fewest parameters, counted on the meta device.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "zoo_results.jsonl"
FAMILIES = ROOT / "benchmarks" / "zoo_timm_families.json"
REPORT = ROOT / "docs" / "coverage.md"
KINDS_RESULTS = ROOT / "benchmarks" / "zoo_kinds_results.jsonl"
PROPS = ("searchable", "runs", "output_shape", "equivalence", "flops", "onnx", "pt2")
KIND_PROPS = PROPS + ("final_outputs",)  # final_outputs: models traced in part (detection, flow)
OTHER_KINDS = ("detection", "segmentation", "video", "flow")


def torchvision_models():
    import torchvision

    return [f"tv:{n}" for n in sorted(torchvision.models.list_models(module=torchvision.models))]


def torchvision_kind_models(kinds=OTHER_KINDS) -> dict:
    """Kind -> its ``tv:`` names (the kinds of :func:`cafeslim.models.tv.tv_kinds`)."""
    sys.path.insert(0, str(ROOT))
    from cafeslim.models.tv import tv_kinds

    table = tv_kinds()
    return {k: [f"tv:{n}" for n in sorted(table) if table[n] == k] for k in kinds}


def timm_families():
    if FAMILIES.exists():
        return json.loads(FAMILIES.read_text())
    import timm
    import torch

    best = {}
    for name in timm.list_models():
        fam = re.match(r"[a-z]+", name).group(0)
        try:
            with torch.device("meta"):
                n = sum(p.numel() for p in timm.create_model(name).parameters())
        except Exception:
            continue
        if fam not in best or n < best[fam][1]:
            best[fam] = (name, n)
    out = {fam: f"timm:{name}" for fam, (name, _) in sorted(best.items())}
    FAMILIES.write_text(json.dumps(out, indent=1) + "\n")
    return out


def spawn(name: str, timeout: int, specs: int = 2, img_size=None) -> dict:
    """Run ``cafeslim check NAME --json`` in its own process; its whole stdout must be one JSON document."""
    t0 = time.time()
    cmd = [sys.executable, "-m", "cafeslim", "check", name, "--json", "--specs", str(specs)]
    if img_size:
        cmd += ["--img-size", str(img_size)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "passed": False, "status": f"timeout after {timeout} s"}
    seconds = round(time.time() - t0, 1)
    if proc.returncode in (0, 1):  # 1: a property failed, still a report
        try:
            row = json.loads(proc.stdout)
        except json.JSONDecodeError:
            lines = proc.stdout.count("\n")
            return {"model": name, "passed": False, "seconds": seconds,
                    "status": f"error: stdout is not one JSON document ({lines} lines)"}
        row.update(model=name, check=row.get("status"), status="ok", seconds=seconds)
        if img_size:
            row["img_size"] = int(img_size)
        return row
    err = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
    if proc.returncode in (-9, 137) or "MemoryError" in proc.stderr or "DefaultCPUAllocator" in proc.stderr:
        return {"model": name, "passed": False, "status": "skipped: does not fit in memory", "seconds": seconds}
    return {"model": name, "passed": False, "status": f"error: {err}", "seconds": seconds}


def json_outputs(name: str, timeout: int) -> dict:
    """``{"inspect": "ok" | why not, "inspect-bins": ...}``: is each command's stdout one JSON document?"""
    out = {}
    for command in ("inspect", "inspect-bins"):
        cmd = [sys.executable, "-m", "cafeslim", command, name, "--json"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired:
            out[command] = f"timeout after {timeout} s"
            continue
        if proc.returncode != 0:
            out[command] = f"exit {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            continue
        try:
            json.loads(proc.stdout)
            out[command] = "ok"
        except json.JSONDecodeError:
            out[command] = f"stdout is not one JSON document ({proc.stdout.count(chr(10))} lines)"
    return out


def load_results(path: Path = RESULTS) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["model"]] = row
    return out


def prop_status(row: dict, prop: str) -> str:
    """``passed``/``failed``/``not verified`` of one property, also for lines of the old format.

    Old lines have booleans only, and an ``n/a`` detail where equivalence was skipped (and
    their passes were not proven sensitive, but nothing says which were vacuous).
    """
    statuses = row.get("statuses")
    if statuses:
        return statuses.get(prop, "")
    props = row.get("properties")
    if not props:
        return ""
    if str((row.get("details") or {}).get(prop, "")).startswith("n/a"):
        return "not verified"
    return "passed" if props.get(prop) else "failed"


def model_status(row: dict) -> str:
    """The overall status of a results line (old lines: from their booleans)."""
    if row.get("status") != "ok":
        return "error"
    if row.get("check"):
        return row["check"]
    values = {prop_status(row, p) for p in PROPS if prop_status(row, p)}
    return "failed" if "failed" in values else "passed" if values <= {"passed"} else "not verified"


MARK = {"passed": "✓", "failed": "✗", "not verified": "?", "": "–", "error": "✗"}


def _cell(row, prop):
    return MARK[prop_status(row, prop)]


def _sens(row) -> str:
    s = row.get("sensitivity") or {}
    return " / ".join("–" if s.get(k) is None else f"{s[k]:.1e}" for k in ("equivalence", "input"))


def _reasons(row) -> str:
    reasons = row.get("fixed_reasons") or {}
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    return "; ".join(f"{n}× {r}" for r, n in top if r not in ("model input", "model output"))


def summary(rows, props=PROPS) -> str:
    """A table: per property, how many models passed, failed, were not verified (or did not run)."""
    rows = list(rows)
    lines = [f"{'property':<13} {'passed':>7} {'failed':>7} {'not verified':>13} {'no result':>10}"]
    for prop in (*props, "overall"):
        got = [model_status(r) if prop == "overall" else prop_status(r, prop) if r.get("status") == "ok" else ""
               for r in rows]
        n = {k: sum(1 for s in got if s == k) for k in ("passed", "failed", "not verified")}
        lines.append(f"{prop:<13} {n['passed']:>7} {n['failed']:>7} {n['not verified']:>13} "
                     f"{len(got) - sum(n.values()):>10}")
    return "\n".join(lines)


def kind_tables(kind_results: dict, kinds: dict) -> list:
    """Markdown lines: one table per torchvision model kind (detection, segmentation, ...)."""
    lines = []
    for kind, names in kinds.items():
        done = [kind_results[n] for n in names if n in kind_results]
        passed = sum(1 for r in done if model_status(r) == "passed")
        lines += [f"## torchvision {kind}", "", f"**{passed} of {len(names)}** pass ({len(done)} run).",
                  "", *result_table(kind_results, names, KIND_PROPS), ""]
    return lines


def result_table(results: dict, names, props=PROPS) -> list:
    """Markdown rows: one per model, a column per property."""
    rows = ["| model | searchable | fixed | FLOPs at uniform 0.5 | " + " | ".join(props)
            + " | status | sensitivity (equivalence / input) | notes |",
            "|---|---|---|---|" + "---|" * len(props) + "---|---|---|"]
    for n in names:
        r = results.get(n)
        if r is None:
            rows.append(f"| {n} | | | | " + " | " * len(props) + " | | not run |")
            continue
        ratio = r.get("uniform_half_flops_ratio")
        notes = r.get("status", "") if r.get("status") != "ok" else _reasons(r)
        if r.get("status") == "ok" and model_status(r) != "passed":
            bad = [f"{k}: {v}" for k, v in (r.get("details") or {}).items()
                   if prop_status(r, k) not in ("passed", "")]
            notes = "; ".join(bad)[:300]
        if r.get("img_size"):
            notes = f"at {r['img_size']} px; {notes}"
        rows.append(f"| {n} | {r.get('searchable_groups', '–')} | {r.get('fixed_groups', '–')} | "
                    f"{'' if ratio is None else f'{ratio:.2f}'} | "
                    + " | ".join(_cell(r, p) for p in props)
                    + f" | {MARK[model_status(r)]} | {_sens(r)} | {notes.replace('|', '/')} |")
    return rows


def write_report(results: dict, tv_names, timm_names, command: str) -> None:
    def table(names):
        return result_table(results, names)

    def totals(names):
        done = [results[n] for n in names if n in results]
        passed = sum(1 for r in done if model_status(r) == "passed")
        skipped = sum(1 for r in done if str(r.get("status", "")).startswith("skipped"))
        return passed, len(done), skipped, len(names)

    def strict(names):
        # Rows of the previous format never proved sensitivity: count the three-way rows apart.
        rows = [results[n] for n in names if n in results and results[n].get("statuses")]
        by = {s: sum(1 for r in rows if model_status(r) == s) for s in ("passed", "failed", "not verified")}
        return (f"{len(rows)} with the three-way check: {by['passed']} passed, {by['failed']} failed, "
                f"{by['not verified']} not verified")

    def json_line(names):
        rows = [results[n] for n in names if n in results and "json_outputs" in results[n]]
        good = sum(1 for r in rows if set(r["json_outputs"].values()) == {"ok"})
        bad = [f"{r['model']} ({r['json_outputs']})" for r in rows if set(r["json_outputs"].values()) != {"ok"}]
        return (f"`inspect --json` and `inspect-bins --json` print one JSON document for {good} of "
                f"{len(rows)} models checked" + (": not for " + "; ".join(bad) if bad else ""))

    tvp, tvd, tvs, tvn = totals(tv_names)
    tip, tid, tis, tin = totals(timm_names)
    lines = [
        "# Zoo coverage",
        "",
        "`cafeslim check` on every torchvision classification model and on the smallest model of",
        "every timm family (randomly initialised, at the model's default input size, each in its",
        "own process, through `cafeslim check --json`). A model passes when it has at least one",
        "searchable group and every property holds on random prefix and scattered IndexSpecs: it",
        "runs, keeps the output shape, equals the full-width reference (removed channels ignored,",
        "channel norms masked to the kept channels), FlopsModel is within 0.5% of fvcore on the",
        "slimmed model, and ONNX (onnxruntime) and `.pt2` reproduce PyTorch; `?` marks a property",
        "that is *not verified*: its comparison could not have failed on that model (see",
        "docs/check.md). Rows of the previous format show `?` only for equivalence n/a; their",
        "sensitivity is `–`.",
        "",
        f"Produced by: `{command}`",
        "",
        f"- torchvision: **{tvp} of {tvn}** pass ({tvd} run, {tvs} skipped for memory; {strict(tv_names)})",
        f"- timm families: **{tip} of {tin}** pass ({tid} run, {tis} skipped for memory; {strict(timm_names)})",
        f"- {json_line(tv_names + timm_names)}",
        *([f"- not run yet: {tvn - tvd + tin - tid} models (the sweep was stopped; `python benchmarks/zoo.py` "
           "resumes from `benchmarks/zoo_results.jsonl`)"] if tvn - tvd + tin - tid else []),
        "",
        "Reference: Torch-Pruning 1.6 at 50% width slims 64 of 80 torchvision and 69 of 157 timm",
        "families (measured on this machine by the issue's author).",
        "",
        "## torchvision",
        "",
        *table(tv_names),
        "",
        "## timm (smallest model per family)",
        "",
        *table(timm_names),
        "",
        *(kind_tables(load_results(KINDS_RESULTS), torchvision_kind_models())
          if KINDS_RESULTS.exists() else []),
    ]
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--specs", type=int, default=2, help="random IndexSpecs per model (check --specs)")
    ap.add_argument("--only", action="append")
    ap.add_argument("--fresh", action="store_true", help="rerun models that already have a result")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--stale", action="store_true", help="rerun only rows of the older, boolean-only format")
    ap.add_argument("--json-only", action="store_true",
                    help="only add the inspect/inspect-bins --json check to rows that lack it")
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--no-tv", action="store_true")
    ap.add_argument("--kinds", help="comma-separated torchvision kinds out of "
                    f"{','.join(OTHER_KINDS)} (or 'all') instead of classification and timm")
    ap.add_argument("--img-size", type=int, help="check --img-size (e.g. a small detection input)")
    args = ap.parse_args()
    if args.kinds:
        return run_kinds(args)
    tv_names = [] if args.no_tv else torchvision_models()
    timm_names = [] if args.no_timm else list(timm_families().values())
    results = load_results()
    def wanted(n):
        row = results.get(n)
        if args.json_only:
            return row is not None and "json_outputs" not in row
        if args.stale:
            return row is None or not row.get("statuses")
        return args.fresh or row is None

    todo = args.only or [n for n in tv_names + timm_names if wanted(n)]
    def row_of(name):
        row = dict(results[name]) if args.json_only else spawn(name, args.timeout, args.specs)
        row["json_outputs"] = json_outputs(name, args.timeout)
        return row

    done = [] if args.report_only else sweep(todo, row_of, RESULTS, args.jobs)
    results = load_results()
    print(summary(done or results.values()))
    write_report(results, torchvision_models(), list(timm_families().values()),
                 "python benchmarks/zoo.py --jobs 2")


def sweep(todo, row_of, results_file: Path, jobs: int) -> list:
    """Run ``row_of`` over ``todo`` in ``jobs`` threads, appending each row as it lands."""
    def work(name):
        row = row_of(name)
        with results_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        extra = f" json {row['json_outputs']}" if "json_outputs" in row else ""
        print(f"{name}: {model_status(row).upper()} {row.get('status')} sensitivity {_sens(row)} "
              f"{row.get('seconds', '')}s{extra}", flush=True)
        return row

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(work, todo))


def run_kinds(args) -> None:
    """The ``--kinds`` sweep: check each model of the chosen kinds, one results line each."""
    kinds = OTHER_KINDS if args.kinds == "all" else tuple(k.strip() for k in args.kinds.split(","))
    unknown = set(kinds) - set(OTHER_KINDS)
    if unknown:
        sys.exit(f"unknown kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(OTHER_KINDS)}")
    by_kind = torchvision_kind_models(kinds)
    results = load_results(KINDS_RESULTS)
    names = [n for k in kinds for n in by_kind[k]]
    todo = args.only or [n for n in names if args.fresh or n not in results]
    done = [] if args.report_only else sweep(
        todo, lambda name: spawn(name, args.timeout, args.specs, args.img_size), KINDS_RESULTS, args.jobs)
    print(summary(done or load_results(KINDS_RESULTS).values(), KIND_PROPS))
    print("\n".join(kind_tables(load_results(KINDS_RESULTS), by_kind)))


if __name__ == "__main__":
    main()
