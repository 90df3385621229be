"""Plot of the search space's bins, in the spirit of the paper's Fig. 5.

Shared by ``cafeslim inspect-bins --plot`` and the search run's ``report.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING:
    from .space import SearchSpace


def space_label(space: "SearchSpace") -> str:
    if space.meta.get("mode") == "uniform":
        return f"uniform bins, K={space.meta.get('num_bins')}"
    return f"FLOPs-sensitive bins, β={space.beta:g}"


def plot_bins(space: "SearchSpace", path: Path, title: str = "") -> Path:
    """Bin size and number of bins per searchable group, in the spirit of the paper's Fig. 5.

    Example:
        >>> plot_bins(space, Path("bins.png"), title="tv:mobilenet_v2")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    groups = space.groups
    n = len(groups)
    idx = list(range(n))
    size = [g.bin_size * g.blocks for g in groups]
    count = [g.num_bins for g in groups]
    width = min(max(7.0, 0.22 * n + 2.0), 30.0)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, 6.5), sharex=True,
                                   gridspec_kw={"hspace": 0.08})
    ax1.bar(idx, size, color="#4C72B0")
    ax1.set_ylabel("bin size (channels)")
    ax2.bar(idx, count, color="#DD8452")
    ax2.set_ylabel("number of bins")
    for ax, vals in ((ax1, size), (ax2, count)):
        pos = [v for v in vals if v > 0]
        if pos and max(pos) / min(pos) > 30:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    graph_groups = {g.id: g for g in space.graph.groups} if space.graph is not None else {}
    if n <= 80:
        labels = [f"{_short(graph_groups, g.gid)}  g{g.gid}" for g in groups]
        ax2.set_xticks(idx)
        ax2.set_xticklabels(labels, rotation=90, fontsize=7)
    ax2.set_xlabel("searchable group, in network order (first producing layer, group id)")
    ax2.set_xlim(-0.6, n - 0.4)
    fig.suptitle(title or space_label(space), fontsize=11)
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(groups: Dict, gid: int) -> str:
    g = groups.get(gid)
    if g is None:
        return ""
    name = (g.producers or g.layers or [""])[0]
    return name if len(name) <= 28 else "…" + name[-27:]
