"""Each new task end to end through the command line: search (a few steps) → train → eval.

In-process calls of :func:`cafeslim.cli.app.main` at 32 px, two supernet steps, one training
epoch: the files each command writes, the task recorded in them, and metrics in [0, 1].
Segmentation runs on a tiny user model (``tiny_seg:build``, torchvision's ``{"out": ...}``
form) in the default suite, and on ``tv:lraspp_mobilenet_v3_large`` (whose exports take
longer) in the slow one.
"""

from __future__ import annotations

import json

import pytest
import yaml

from cafeslim.cli.app import main

from pathlib import Path

METRICS = {"segmentation": ("miou", "pixel_acc"), "multilabel": ("label_acc", "exact_match")}
CASES = [("segmentation", "tiny_seg:build"), ("multilabel", "timm:test_resnet"),
         pytest.param("segmentation", "tv:lraspp_mobilenet_v3_large", marks=pytest.mark.slow)]
TINY = {"train": {"max_steps": 2, "batch_size": 32, "workers": 0, "log_every": 1},
        "search": {"population": 2, "iterations": 1, "parents": 1, "recal_batches": 1,
                   "eval_batches": 1}}

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(capsys, *args):
    """``cafeslim ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


def flat(text: str) -> str:
    """The console wraps long lines: compare with single spaces."""
    return " ".join(text.split())


@pytest.mark.parametrize("task,model", CASES)
def test_search_train_eval(task, model, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))   # tiny_seg:build
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    tmp, run = tmp_path, tmp_path / "run"
    code, out, err = run_cli(capsys, "search", model, "--task", task, "--flops", "50%",
                             "--img-size", 32, "--config", tmp / "tiny.yaml", "--out", run,
                             "--threads", 1)
    assert code in (0, None), err
    for name in ("config.yaml", "graph.json", "bins.json", "last.pt", "metrics.jsonl",
                 "search.jsonl", "result.json", "report.md"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == task
    result = json.loads((run / "result.json").read_text())
    assert result["task"] == task and result["score"]["metric"] == METRICS[task][0]
    assert 0.0 <= result["budgets"][0]["top1"] <= 1.0
    label = result["score"]["label"]
    assert f"D_val score: {label} on the images the search selected on" in flat(out)

    code, out, err = run_cli(capsys, "train", run, "--epochs", 1, "-b", 64, "--threads", 1)
    assert code in (0, None), err
    trained = run / "train"
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "model.pt", "model.onnx",
                 "widths.json", "report.md", "weights.safetensors"):
        assert (trained / name).is_file(), name
    record = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    meta = json.loads((trained / "widths.json").read_text())
    primary = METRICS[task][0]
    assert meta["task"] == task and meta[f"{primary}_test"] == record[f"test_{primary}"]
    assert all(0.0 <= record[f"test_{m}"] <= 1.0 for m in METRICS[task])
    assert 0.0 <= record[f"holdout_{primary}"] <= 1.0
    assert yaml.safe_load((trained / "config.yaml").read_text())["train"]["task"] == task
    assert f"test {label} {100 * record[f'test_{primary}']:.2f}%" in flat(out)

    code, out, err = run_cli(capsys, "eval", trained, "--batch-sizes", 1, "--repeats", 3,
                             "--threads", 1, "--json")
    assert code in (0, None), err
    rep = json.loads(out)   # --json: exactly one document on stdout
    rows = {m["name"]: m for m in rep["metrics"]}
    assert rep["task"] == task and rep["images"] > 0
    for m in METRICS[task]:
        assert 0.0 <= rows[m]["value"] <= 1.0
    assert rows[primary]["value"] == pytest.approx(record[f"test_{primary}"])
    assert rows["flops"]["ratio"] < 0.6
