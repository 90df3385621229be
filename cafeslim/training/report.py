"""``train/report.md``: what was trained, how, the learning curves and the numbers to quote.

The accuracy to quote is the trained model's top-1 on the test split (``val/`` or the demo's
fixed test digits), which nothing selected on; the holdout top-1 (split off the training
images) chose ``best.pt`` and is a selection score, like the search's D_val top-1.

Example:
    >>> write_report(Path("runs/x/train"), summary, history)                # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import atomic_write

CURVES = "curves.png"


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Optional[Path]:
    """Training loss and top-1 (test, holdout) per epoch, as one PNG; None without epochs.

    Example:
        >>> plot_curves([{"epoch": 1, "loss": 2.0, "test_top1": 0.5}], Path("c.png"))  # doctest: +SKIP
    """
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [r["loss"] for r in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in (("test_top1", "test top-1"), ("holdout_top1", "holdout top-1 (selection)")):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax2.plot(epochs, [100 * v if v is not None else float("nan") for v in values],
                     marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="%", title="accuracy")
    ax2.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def write_report(out: Path, summary: Mapping[str, Any], history: List[Dict[str, Any]]) -> Path:
    """Write ``report.md`` (and ``curves.png``) into ``out``.

    Args:
        out: the training folder.
        summary: ``target``, ``source``, ``init``, ``teacher``, ``data``, ``test_top1``,
            ``test_top5``, ``best_epoch``, ``best_holdout_top1``, ``recipe`` (a dict),
            ``images_per_s``, ``seconds``, ``export_errors``.
        history: the per-epoch records.

    Example:
        >>> write_report(Path("train"), {"target": "runs/x"}, [])                   # doctest: +SKIP
    """
    png = plot_curves(history, out / CURVES, str(summary.get("target", "")))
    s = summary
    lines = [f"# Training of {s.get('target')}", "",
             f"- original model: `{s.get('source')}`; init: **{s.get('init')}**; "
             f"teacher: {s.get('teacher') or 'none'}",
             f"- data: `{s.get('data')}` ({s.get('sizes')})",
             f"- **test top-1 {_pct(s.get('test_top1'))}**, top-5 {_pct(s.get('test_top5'))} "
             "(the last epoch's model, on the test split nothing selected on: the number to "
             "quote)",
             f"- best holdout top-1 {_pct(s.get('best_holdout_top1'))} at epoch "
             f"{s.get('best_epoch')} (`best.pt`; a selection score on images held out of "
             "training, not the model's accuracy)",
             f"- {s.get('images_per_s', 0):.0f} images/s, {s.get('seconds', 0):.0f} s", ""]
    if png is not None:
        lines += [f"![learning curves]({CURVES})", ""]
    lines += ["| epoch | loss | lr | holdout top-1 | test top-1 | test top-5 | images/s |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in history:
        lines.append(f"| {r['epoch']} | {r['loss']:.4f} | {r['lr']:.3g} | "
                     f"{_pct(r.get('holdout_top1'))} | {_pct(r.get('test_top1'))} | "
                     f"{_pct(r.get('test_top5'))} | {r['img_s']:.0f} |")
    recipe = s.get("recipe") or {}
    lines += ["", "## Recipe", "", "```", *(f"{k}: {v}" for k, v in recipe.items()), "```"]
    for fmt, why in (s.get("export_errors") or {}).items():
        lines.append(f"\n**export {fmt} failed**: {why}")
    text = "\n".join(lines) + "\n"
    return atomic_write(out / "report.md", lambda fh: fh.write(text.encode("utf-8")))


__all__ = ["CURVES", "plot_curves", "write_report"]
