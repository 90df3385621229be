"""``train/report.md``: what was trained, how, the learning curves and the numbers to quote.

The number to quote is the trained model's test score — the task's metric (top-1, mIoU, mean
label accuracy; :mod:`cafeslim.tasks`) on the test split (``val/`` or the demo's fixed test
part), which nothing selected on; the holdout score (split off the training images) chose
``best.pt`` and is a selection score, like the search's D_val score.

Example:
    >>> write_report(Path("runs/x/train"), summary, history)                # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import atomic_write
from ..tasks.base import pct as _pct

CURVES = "curves.png"


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str = "",
                task: Any = None) -> Optional[Path]:
    """Training loss and the task's metric (test, holdout) per epoch, as one PNG; None without epochs.

    Example:
        >>> plot_curves([{"epoch": 1, "loss": 2.0, "test_top1": 0.5}], Path("c.png"))  # doctest: +SKIP
    """
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..tasks import get_task

    t = get_task(task)
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [r["loss"] for r in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in ((f"test_{t.metric}", f"test {t.label()}"),
                       (f"holdout_{t.metric}", f"holdout {t.label()} (selection)")):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax2.plot(epochs, [100 * v if v is not None else float("nan") for v in values],
                     marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="%", title=t.label())
    ax2.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, summary: Mapping[str, Any], history: List[Dict[str, Any]],
                 task: Any = None) -> Path:
    """Write ``report.md`` (and ``curves.png``) into ``out``.

    Args:
        out: the training folder.
        summary: ``target``, ``source``, ``init``, ``teacher``, ``data``, ``test_<metric>``
            for each of the task's metrics, ``best_epoch``, ``best_holdout_<metric>``,
            ``recipe`` (a dict), ``images_per_s``, ``seconds``, ``export_errors``.
        history: the per-epoch records.
        task: the :mod:`cafeslim.tasks` task (None: classification).

    Example:
        >>> write_report(Path("train"), {"target": "runs/x"}, [])                   # doctest: +SKIP
    """
    from ..tasks import get_task

    t = get_task(task)
    png = plot_curves(history, out / CURVES, str(summary.get("target", "")), t)
    s, m, label = summary, t.metric, t.label()
    rest = "".join(f", {t.label(k)} {_pct(s.get(f'test_{k}'))}" for k in t.metrics[1:])
    lines = [f"# Training of {s.get('target')}", "",
             f"- original model: `{s.get('source')}`; init: **{s.get('init')}**; "
             f"teacher: {s.get('teacher') or 'none'}",
             f"- data: `{s.get('data')}` ({s.get('sizes')})",
             f"- **test {label} {_pct(s.get(f'test_{m}'))}**{rest} "
             "(the last epoch's model, on the test split nothing selected on: the number to "
             "quote)",
             f"- best holdout {label} {_pct(s.get(f'best_holdout_{m}'))} at epoch "
             f"{s.get('best_epoch')} (`best.pt`; a selection score on images held out of "
             "training, not the model's accuracy)",
             f"- {s.get('images_per_s', 0):.0f} images/s, {s.get('seconds', 0):.0f} s", ""]
    if png is not None:
        lines += [f"![learning curves]({CURVES})", ""]
    heads = [f"holdout {label}"] + [f"test {t.label(k)}" for k in t.metrics]
    lines += ["| epoch | loss | lr | " + " | ".join(heads) + " | images/s |",
              "|---:|---:|---:|" + "---:|" * len(heads) + "---:|"]
    for r in history:
        cells = [_pct(r.get(f"holdout_{m}"))] + [_pct(r.get(f"test_{k}")) for k in t.metrics]
        lines.append(f"| {r['epoch']} | {r['loss']:.4f} | {r['lr']:.3g} | "
                     + " | ".join(cells) + f" | {r['img_s']:.0f} |")
    recipe = s.get("recipe") or {}
    lines += ["", "## Recipe", "", "```", *(f"{k}: {v}" for k, v in recipe.items()), "```"]
    for fmt, why in (s.get("export_errors") or {}).items():
        lines.append(f"\n**export {fmt} failed**: {why}")
    text = "\n".join(lines) + "\n"
    return atomic_write(out / "report.md", lambda fh: fh.write(text.encode("utf-8")))


__all__ = ["CURVES", "plot_curves", "write_report"]
