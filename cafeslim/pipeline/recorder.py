"""Live record of a search: ``search.jsonl``, the searchers' saved state, a progress bar.

Example:
    >>> rec = SearchRecorder(run / "search.jsonl", run / "search_state.json", None, None,
    ...                      False, "50%", total=50)                            # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Mapping, Optional

from ..config import atomic_write


class SearchRecorder:
    """Writes ``search.jsonl`` and the searchers' state as a search goes, and shows progress.

    On creation the log is rewritten to the earlier stages' lines plus the saved histories of
    this search: records scored after the last saved generation are dropped (the resumed
    search scores them again), so the log reads as one uninterrupted run. A live rich bar on
    stderr shows generations done, widths evaluated and the best D_val top-1 so far.

    Args:
        log_path, state_path: ``search.jsonl`` and the state file (written atomically).
        stage: this search's stage (None: single-stage; every earlier line is dropped).
        states: the saved per-budget states being resumed (None: a fresh search).
        progress: draw the bar; label, total: its text and number of generations.
        write: False on the ranks that must not write (torchrun).

    Example:
        >>> rec = SearchRecorder(run / "search.jsonl", run / "search_state.json", None, None,
        ...                      True, "50%", total=50)                            # doctest: +SKIP
        >>> search_budgets(..., on_eval=rec.on_eval, on_state=rec.on_state)       # doctest: +SKIP
    """

    def __init__(self, log_path: Path, state_path: Path, stage: Optional[int],
                 states: Optional[List[Any]], progress: bool, label: str, total: int,
                 write: bool = True) -> None:
        self.state_path, self.write, self.n, self.best = state_path, write, 0, float("nan")
        keep = []
        if stage is not None and log_path.exists():
            for line in log_path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line).get("stage", stage)) < stage:
                        keep.append(line)
                except (ValueError, AttributeError, TypeError):
                    continue  # a line torn by a kill
        for st in states or []:
            keep += [json.dumps(r) for r in (st or {}).get("history", [])]
        self.log = None
        if write:
            text = "".join(k + "\n" for k in keep)
            atomic_write(log_path, lambda fh: fh.write(text.encode("utf-8")))
            self.log = open(log_path, "a", encoding="utf-8")
        self.bar = None
        if progress:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn(f"[bold]search {label}"), BarColumn(bar_width=20),
                                MofNCompleteColumn(), TextColumn(
                                    "gen  {task.fields[n]} widths  best D_val score {task.fields[best]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.task = self.bar.add_task("search", total=total, completed=self.generations(states),
                                          n=0, best="-")
            self.bar.start()

    @staticmethod
    def generations(states: Optional[List[Any]]) -> int:
        """Finished generations over all budgets of a list of states."""
        return sum(int((st or {}).get("generation", 0)) for st in states or [])

    def on_eval(self, rec: Mapping[str, Any]) -> None:
        """Append one newly scored record to the log (searchers' ``on_eval``)."""
        if self.log is not None:
            self.log.write(json.dumps(rec) + "\n")
        self.n += 1
        if not rec["top1"] <= self.best:  # also replaces the initial NaN
            self.best = float(rec["top1"])
        if self.bar is not None:
            self.bar.update(self.task, n=self.n, best=f"{self.best:.2%}")

    def on_state(self, states: List[Any]) -> int:
        """Save the states after a generation (searchers' ``on_state``); returns generations."""
        if self.write:
            self.log.flush()
            text = json.dumps({"format": "cafeslim.search-state/1", "budgets": states}) + "\n"
            atomic_write(self.state_path, lambda fh: fh.write(text.encode("utf-8")))
        done = self.generations(states)
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        return done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.log is not None:
            self.log.close()


__all__ = ["SearchRecorder"]
