"""What a search run reports: ``result.json``, ``report.md`` and its plots.

Plots (PNG, in ``plots/``), drawn with matplotlib's Agg backend (no display needed):

* ``widths.png`` — the kept fraction of every searchable layer per budget, like the paper's
  Fig. 4, with the full channel counts in the labels;
* ``accuracy_flops.png`` — the D_val score (the task's metric on D_val — top-1, mIoU or mean
  label accuracy —, the *selection score* the search ranks widths by; not an accuracy) against
  FLOPs of every evaluated width vector, the chosen ones marked, the budget windows shaded;
* ``bins.png`` — bin size and number of bins per layer (Fig. 5), from ``inspect-bins``;
* ``loss.png`` — the supernet's training loss (when the run trained one).

Example:
    >>> write_report(Path("runs/test_resnet-50pct"), read_result("runs/test_resnet-50pct"))  # doctest: +SKIP
    PosixPath('runs/test_resnet-50pct/report.md')
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..config import RUN_FORMAT
from ..errors import CheckpointError
from ..units import human

SCORE = "D_val score (selection)"
SCORE_NOTE = ("D_val score: top-1 on the images the search selected on — a selection score "
              "that ranks widths, not the model's accuracy. The accuracy to quote is the test "
              "top-1 of `cafeslim train RUN` + `cafeslim eval RUN/train`.")
"""Classification's note (:attr:`cafeslim.tasks.Task.score_note` words it for every task)."""
UNTRAINED = "not trained"
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3")


def result_json(b: Any, out: Mapping[str, Any], seconds: float) -> Dict[str, Any]:
    """The ``result.json`` document of a run.

    ``task`` names the run's task and ``score.metric`` the metric of its D_val scores (the
    ``top1`` fields hold that metric whatever it is: top-1, mIoU, mean label accuracy).
    Per budget: the budget (as written and in FLOPs) and its window, the D_val score of the
    chosen sub-network as evaluated (``top1``) and, as ``selection_score``, the same number
    where it means something (None for ``uniform``, whose weights are untrained: its top1 is
    chance), FLOPs of the
    winning IndexSpec by the FLOPs model (exact: it equals fvcore on the slimmed model), params
    of the slimmed model, bin counts ``k`` of ``num_bins``, channels per searchable group, the
    winning candidate and the IndexSpec itself, and the checkpoint it was found on.

    Args:
        b: the run's :class:`~cafeslim.pipeline.objects.Built`.
        out: what the method produced (``results``, ``checkpoints``, ``train``, ``search``,
            optionally ``space`` of the last stage and ``stages``).
        seconds: the run's wall time.

    Example:
        >>> doc = result_json(built, out, 312.0)                         # doctest: +SKIP
        >>> doc["budgets"][0]["flops"] <= doc["budgets"][0]["budget_flops"]  # doctest: +SKIP
        True
    """
    import torch

    from ..export import slim
    from ..flops import count_params
    from ..tasks import get_task

    graph, s, task = b.graph, b.settings.search, get_task(b.settings.task)
    trained = s.method != "uniform"  # uniform scores untrained weights: chance
    full_params = count_params(b.info.model)
    space = out.get("space", b.space)
    rows = []
    for text, budget, res, ckpt in zip(s.budgets, b.budgets, out["results"], out["checkpoints"]):
        best = res.best
        spec = best.best_spec
        params = count_params(slim(b.info.model, graph, spec))
        rows.append({
            "budget": text, "budget_flops": budget, "window": [s.low * budget, budget],
            "top1": best.top1, "selection_score": best.top1 if trained else None,
            "flops": best.flops, "flops_ratio": best.flops / b.fm.full,
            "flops_human": human(best.flops), "params": params,
            "params_ratio": params / full_params if full_params else None,
            "k": [int(v) for v in best.k], "num_bins": [int(v) for v in space.num_bins],
            "widths": {str(g): int(w) for g, w in graph.widths_of(spec).items()},
            "candidate": best.candidate, "candidate_top1s": list(best.candidate_top1s),
            "spec": {str(g): [int(i) for i in v] for g, v in sorted(spec.items())},
            "evaluated": res.evaluated, "searcher": res.searcher, "checkpoint": ckpt})
    return {
        "format": RUN_FORMAT, "model": b.info.name, "method": s.method, "task": task.name,
        "data": b.settings.data,
        "score": {"name": SCORE, "trained": trained, "note": task.score_note,
                  "metric": task.metric, "label": task.label()},
        "input_size": list(b.info.input_size), "num_classes": b.data.num_classes,
        "full": {"flops": b.fm.full, "params": full_params},
        "groups": [{"id": g.id, "layer": (g.producers or g.layers or [""])[0],
                    "channels": g.channels} for g in graph.searchable],
        "space": {"groups": len(b.space.groups), "log10_size": b.space.log10_size,
                  "beta": b.space.beta, "offset": b.space.offset},
        "train": out.get("train"), "search": out.get("search"), "stages": out.get("stages"),
        # Float reductions depend on the thread count: a run reproduces exactly at the same one.
        "seconds": round(seconds, 2), "threads": torch.get_num_threads(), "budgets": rows}


def read_result(run_dir: Union[str, Path]) -> Dict[str, Any]:
    """A finished run's ``result.json``.

    Raises:
        CheckpointError: no such folder, not a run folder, or a run that has not finished.

    Example:
        >>> read_result("runs/test_resnet-50pct")["budgets"][0]["widths"]   # doctest: +SKIP
        {'1': 16, '2': 32, ...}
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    path = run_dir / "result.json"
    if not path.is_file():
        what = ("has not finished (no result.json); continue it with cafeslim search --resume"
                if (run_dir / "config.yaml").is_file() else
                "is not a cafeslim run folder (no result.json)")
        raise CheckpointError(f"{run_dir} {what}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is unreadable or corrupt") from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or not doc.get("budgets"):
        raise CheckpointError(f"{path} is not a cafeslim search result")
    return doc


def _jsonl(path: Path) -> List[Dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _pct(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def score_cell(result: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """A budget's D_val score as shown in tables: a percentage, or ``not trained`` (uniform).

    Example:
        >>> score_cell({"method": "uniform"}, {"top1": 0.1})
        'not trained'
        >>> score_cell({"method": "cafenet"}, {"top1": 0.5})
        '50.00%'
    """
    trained = (result.get("score") or {}).get("trained", result.get("method") != "uniform")
    return _pct(entry["top1"]) if trained else UNTRAINED


def write_report(run_dir: Union[str, Path], result: Mapping[str, Any],
                 space: Any = None) -> Path:
    """Write ``report.md`` and ``plots/*.png`` from a run's files (and its bins, if given).

    Args:
        run_dir: the run folder (``search.jsonl`` and ``metrics.jsonl`` are read from it).
        result: the ``result.json`` document.
        space: the stage-1 :class:`~cafeslim.bins.SearchSpace` for the bins plot (skipped
            when None).

    Example:
        >>> write_report(run, read_result(run), space)                   # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    records = _jsonl(run_dir / "search.jsonl")
    metrics = _jsonl(run_dir / "metrics.jsonl")
    for extra in sorted(run_dir.glob("stage[0-9]*/metrics.jsonl")):
        metrics += [{**m, "stage": extra.parent.name} for m in _jsonl(extra)]
    title = f"{result['model']} ({result['method']})"
    figs = {"widths": plot_widths(result, plots / "widths.png", title),
            "accuracy": plot_accuracy(result, records, plots / "accuracy_flops.png", title)}
    if space is not None and len(space.groups):
        from ..bins.plot import plot_bins

        figs["bins"] = plot_bins(space, plots / "bins.png", title=f"{result['model']}: bins of "
                                 f"the search space (β={space.beta:g}, offset r={space.offset})")
    if metrics:
        figs["loss"] = plot_loss(metrics, plots / "loss.png", title)
    md = _markdown(result, records, {k: v.relative_to(run_dir).as_posix() for k, v in figs.items()},
                   run_dir)
    path = run_dir / "report.md"
    path.write_text(md, encoding="utf-8")
    return path


def _markdown(r: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
              figs: Mapping[str, str], run_dir: Path) -> str:
    full = r["full"]
    lines = [f"# Width search: {r['model']}", "",
             f"Method **{r['method']}**, task {r.get('task', 'classification')}, on data `{r['data']}`, input {'×'.join(map(str, r['input_size']))}; "
             f"full model {human(full['flops'])} FLOPs, {human(full['params'])} params; "
             f"{r['space']['groups']} searchable groups, search space 10^{r['space']['log10_size']:.1f} "
             f"(β={r['space']['beta']:g}, offset r={r['space']['offset']}); run time {r['seconds']:.0f} s.",
             "", "## Result", "",
             f"| budget | FLOPs | of full | params | of full | {SCORE} | widths evaluated | checkpoint |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for b in r["budgets"]:
        lines.append(f"| {b['budget']} | {human(b['flops'])} | {b['flops_ratio']:.3f} | "
                     f"{human(b['params'])} | {b['params_ratio']:.3f} | {score_cell(r, b)} | "
                     f"{b['evaluated']} | {b['checkpoint'] or '–'} |")
    note = (r.get("score") or {}).get("note") or SCORE_NOTE
    lines += ["", note + (" `uniform` trains no weights here, so it has no D_val score "
                                "worth showing." if r["method"] == "uniform" else ""), "",
              "FLOPs count one multiply-add as one FLOP (fvcore's convention), at the input "
              "size above. D_val is held out of the training images; the test split is only "
              "used by `cafeslim train` and `cafeslim eval`.", "", "## Widths per layer", "",
              f"![kept channels per layer]({figs['widths']})", "",
              "| group | layer | channels | " + " | ".join(b["budget"] for b in r["budgets"]) + " |",
              "|---:|---|---:|" + "---:|" * len(r["budgets"])]
    for g in r["groups"]:
        kept = [str(b["widths"].get(str(g["id"]), g["channels"])) for b in r["budgets"]]
        lines.append(f"| {g['id']} | `{g['layer']}` | {g['channels']} | " + " | ".join(kept) + " |")
    how = {"random": "each point is one width trained stand-alone and scored on D_val",
           "uniform": "untrained weights: the scores are chance level"}.get(
        r["method"], "each point is the best of its locally free candidates (max-max, Eq. 13) "
        "after BatchNorm recalibration")
    lines += ["", "## D_val score against FLOPs", "",
              f"![D_val score vs FLOPs]({figs['accuracy']})", "",
              f"{len(records)} width vectors evaluated; {how}."]
    if "bins" in figs:
        lines += ["", "## Bins", "", f"![bins per layer]({figs['bins']})"]
    t, s = r.get("train"), r.get("search") or {}
    if t:
        lines += ["", "## Supernet training", "", f"{t['steps']} of {t['total_steps']} steps "
                  f"({t['epochs']:g} epochs), last logged loss {t.get('final_loss') or float('nan'):.4f}; "
                  f"this invocation: {t['seconds']:.0f} s, {t['images_per_s']:.0f} images/s."]
        if "loss" in figs:
            lines += ["", f"![training loss]({figs['loss']})"]
    if s:
        lines += ["", "## Search", "", f"{s.get('evaluated', 0)} width vectors; this invocation "
                  f"scored {s.get('widths', 0)} in {s.get('seconds', 0):.0f} s "
                  f"({s.get('widths_per_s', 0):.2f}/s), time in BN recalibration "
                  f"{_pct(s.get('recal_share'))}, in evaluation {_pct(s.get('eval_share'))}."]
    keeps = ("" if r["method"] not in ("uniform", "random") else
             f" A `{r['method']}` run keeps no trained weights: `cafeslim export` writes the "
             "seeded initial weights (its parity table shows their D_val top-1), `cafeslim "
             "train` trains the widths from scratch.")
    lines += ["", "## Next", "", "The accuracy to quote: train the chosen widths and measure "
              "them on the test split." + keeps, "", "```bash", f"cafeslim train {run_dir}",
              f"cafeslim eval {run_dir}/train", f"cafeslim export {run_dir}", "```", ""]
    return "\n".join(lines)


def plot_widths(result: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Kept fraction of every searchable layer, one bar series per budget (Fig. 4).

    Example:
        >>> plot_widths(read_result(run), Path("widths.png"))            # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    groups, budgets = result["groups"], result["budgets"]
    n, m = len(groups), len(budgets)
    fig, ax = plt.subplots(figsize=(min(max(7.0, 0.32 * n * max(1, m) ** 0.5 + 2.5), 30.0), 5.0))
    width = 0.8 / max(m, 1)
    for j, b in enumerate(budgets):
        ratio = [b["widths"].get(str(g["id"]), g["channels"]) / g["channels"] for g in groups]
        xs = [i + (j - (m - 1) / 2) * width for i in range(n)]
        ax.bar(xs, ratio, width=width, color=COLORS[j % len(COLORS)],
               label=f"{b['budget']}: {human(b['flops'])} FLOPs, D_val score {score_cell(result, b)}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1.12 + 0.07 * ((m + 1) // 2))  # headroom above 1.0 for the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("kept channels / original")
    ax.set_xticks(range(n))
    ax.set_xticklabels([_short(g["layer"]) + f" ({g['channels']})" for g in groups],
                       rotation=90, fontsize=7 if n > 30 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("searchable layer (original channels), in network order")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9, ncol=2 if m > 1 else 1)
    ax.set_title(f"{title}: width per layer" if title else "width per layer", fontsize=11)
    return _save(fig, path)


def plot_accuracy(result: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: Path,
                  title: str = "") -> Path:
    """D_val score (selection) against FLOPs of every evaluated width, the chosen ones as stars.

    Example:
        >>> plot_accuracy(read_result(run), records, Path("acc.png"))    # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 5.0))
    scale, unit = _unit(result["full"]["flops"])
    # In search order (budgets as given, stages in turn): the same colours as the widths plot.
    keys = list(dict.fromkeys((rec.get("stage") or 0, rec["budget"]) for rec in records))
    for j, key in enumerate(keys):
        pts = [rec for rec in records if (rec.get("stage") or 0, rec["budget"]) == key]
        label = f"evaluated, budget {human(key[1])}" + (f" (stage {key[0]})" if key[0] else "")
        ax.scatter([p["flops"] / scale for p in pts], [100 * p["top1"] for p in pts], s=14,
                   alpha=0.55, color=COLORS[j % len(COLORS)], label=label, linewidths=0)
    for j, b in enumerate(result["budgets"]):
        lo, hi = b["window"]
        ax.axvspan(lo / scale, hi / scale, color="grey", alpha=0.12)
        ax.scatter([b["flops"] / scale], [100 * b["top1"]], marker="*", s=260, color="gold",
                   edgecolors="black", linewidths=0.8, zorder=5,
                   label=f"chosen {b['budget']}: {score_cell(result, b)}" if j < 6 else None)
    ax.set_xlabel(f"FLOPs ({unit}, one multiply-add = one FLOP)")
    ax.set_ylabel(f"{SCORE} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_title((f"{title}: " if title else "") + "D_val score vs FLOPs (grey: budget windows)",
                 fontsize=11)
    return _save(fig, path)


def plot_loss(metrics: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """The supernet's training loss per logged step (one line per stage).

    Example:
        >>> plot_loss(_jsonl(run / "metrics.jsonl"), run / "plots/loss.png")    # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    for j, stage in enumerate(dict.fromkeys(m.get("stage", "stage1") for m in metrics)):
        pts = [m for m in metrics if m.get("stage", "stage1") == stage]
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], marker="o", ms=3,
                color=COLORS[j % len(COLORS)], label=stage)
    ax.set_xlabel("step")
    ax.set_ylabel("min-min loss (the task's)")
    ax.grid(alpha=0.3)
    if j:
        ax.legend(fontsize=8)
    ax.set_title((f"{title}: " if title else "") + "supernet training", fontsize=11)
    return _save(fig, path)


def _unit(full: float) -> tuple:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if full >= 10 * scale:
            return scale, unit
    return 1.0, ""


def _short(name: str, n: int = 26) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["SCORE", "SCORE_NOTE", "UNTRAINED", "plot_accuracy", "plot_loss", "plot_widths",
           "read_result", "result_json", "score_cell", "write_report"]
