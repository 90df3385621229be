"""Supernet training loss per epoch of ``cafeslim search`` runs: a markdown table and a PNG.

Reads each run folder's ``metrics.jsonl`` (one line every ``log_every`` steps) and averages the
logged min-min losses within each epoch; chance for 10 classes is ln 10 = 2.30.

Usage:
    python benchmarks/learning_curve.py runs/hard-folder runs/demo --png docs/img/supernet_loss.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence


def epoch_losses(run_dir: Path) -> Dict[int, float]:
    """Mean logged training loss of every epoch (1-based) of a run's supernet training.

    Example:
        >>> epoch_losses(Path("runs/test_resnet-50pct"))[1]                  # doctest: +SKIP
        1.93
    """
    per: Dict[int, List[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and "epoch" in rec:
            # ``epoch`` is the fraction done after the step: step s of epoch e has e-1 < x <= e.
            per.setdefault(max(1, math.ceil(float(rec["epoch"]) - 1e-9)), []).append(float(rec["loss"]))
    return {e: sum(v) / len(v) for e, v in sorted(per.items())}


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", default=None, help="comma-separated names (default: folders)")
    p.add_argument("--png", type=Path, default=None)
    a = p.parse_args(argv)
    labels = a.labels.split(",") if a.labels else [r.name for r in a.runs]
    curves = {lab: epoch_losses(r) for lab, r in zip(labels, a.runs)}
    epochs = sorted({e for c in curves.values() for e in c})
    print("| epoch | " + " | ".join(curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    for e in epochs:
        print(f"| {e} | " + " | ".join(f"{c[e]:.3f}" if e in c else "" for c in curves.values()) + " |")
    if a.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for lab, c in curves.items():
            ax.plot(list(c), list(c.values()), marker="o", label=lab)
        ax.axhline(math.log(10), color="grey", ls="--", lw=1, label="chance (ln 10)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("supernet training loss (epoch mean)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        a.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.png, dpi=110)
        print(f"\nwrote {a.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
