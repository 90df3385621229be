"""End to end on the demo digits with timm's test_resnet: search → export → eval, resume, errors.

One tiny run (32 px, 6 training steps, 2 generations of 4) is shared by the tests; together
they stay well under the CI budget on two shared cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from cafeslim.cli.app import main
from cafeslim.config import TrainConfig
from cafeslim.errors import CheckpointError, ConfigError, OutputExistsError
from cafeslim.export.evaluate import evaluate
from cafeslim.pipeline import export_run
from cafeslim.flops import count_flops
from cafeslim.config import RunSettings, SearchConfig
from cafeslim.pipeline import run_search

MODEL = "timm:test_resnet"
SETTINGS = RunSettings(
    MODEL, data="demo",
    train=TrainConfig(epochs=1, max_steps=6, batch_size=32, img_size=32, device="cpu", workers=0,
                      log_every=2, ckpt_every=2, warmup_epochs=0.2, seed=3),
    search=SearchConfig(flops="50%", population=4, iterations=2, parents=2, recal_batches=1))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two shared cores: avoid OpenMP spin contention


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    run = tmp_path_factory.mktemp("e2e") / "run"
    return run_search(SETTINGS, run, progress=False)




def comparable(records):
    """search.jsonl records without the timing fields."""
    return [{k: v for k, v in r.items() if k not in ("recal_s", "eval_s")} for r in records]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_run_directory_is_complete(finished):
    run, result = finished.run_dir, finished.result
    for name in ("config.yaml", "graph.json", "bins.json", "last.pt", "metrics.jsonl",
                 "search.jsonl", "search_state.json", "result.json", "report.md"):
        assert (run / name).is_file(), name
    for png in ("widths", "accuracy_flops", "bins", "loss"):
        assert (run / "plots" / f"{png}.png").stat().st_size > 5000, png
        assert f"plots/{png}.png" in (run / "report.md").read_text()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 6
    b = result["budgets"][0]
    lo, hi = b["window"]
    assert lo <= b["flops"] <= hi == b["budget_flops"] == pytest.approx(0.5 * result["full"]["flops"])
    records = read_jsonl(run / "search.jsonl")
    assert len(records) == b["evaluated"] >= 4
    best = max(records, key=lambda r: r["top1"])
    assert (best["top1"], best["k"]) == (b["top1"], b["k"])
    # Every evaluated width is in the window; widths are channels per searchable group.
    # (A free candidate may keep a group's smaller last bin: below the window, never above.)
    assert all(r["flops"] <= hi for r in records)
    assert set(b["widths"]) == {str(g["id"]) for g in result["groups"]}
    assert json.loads((run / "result.json").read_text()) == result
    # D_val top-1 is labelled as the selection score, and the accuracy to quote is named.
    report = (run / "report.md").read_text()
    assert "D_val score (selection)" in report and "D_val top-1 |" not in report
    assert f"cafeslim train {run}" in report and b["selection_score"] == b["top1"]
    assert result["score"]["trained"] is True and "not the model's accuracy" in result["score"]["note"]


def test_export_reproduces_the_search(finished, tmp_path):
    result = finished.result["budgets"][0]
    rep = export_run(finished.run_dir, out_dir=tmp_path / "export")
    # What the search measured is exactly what the user gets, in PyTorch and onnxruntime.
    assert rep.top1("supernet") == rep.top1("slimmed") == rep.top1("onnx") == result["top1"]
    assert rep.images == 144
    slimmed = next(r for r in rep.parity if r.what.startswith("slimmed"))
    ort_row = next(r for r in rep.parity if r.what.startswith("onnx"))
    assert slimmed.max_abs <= 1e-4 and ort_row.max_abs <= 1e-3
    assert not rep.errors
    # The search's analytic FLOPs are fvcore's count of the exported model.
    model = torch.load(tmp_path / "export" / "model.pt", weights_only=False).eval()
    assert count_flops(model, torch.zeros(1, 3, 32, 32)) == rep.flops_after == result["flops"]
    widths = json.loads((tmp_path / "export" / "widths.json").read_text())
    assert widths["top1_dval"] == result["top1"] and widths["budget"] == "50%"

    ev = evaluate(str(tmp_path / "export"), batch_sizes=(1,), repeats=3, max_seconds=0.5)
    assert ev.data == "demo" and ev.images == 359          # the held-out test digits
    assert 0 <= ev.get("top1").value <= ev.get("top5").value <= 1
    assert ev.get("flops").value == result["flops"]
    assert ev.get("flops").ratio == pytest.approx(result["flops_ratio"])
    assert ev.get("params").value == result["params"]
    for name in ("latency torch b1", "latency onnxruntime b1"):
        assert ev.get(name).value > 0 and ev.get(name).ratio > 0


def test_interrupt_and_resume_match_an_uninterrupted_run(finished, tmp_path):
    run = tmp_path / "run"

    def stop_at(event, count):
        def callback(e, c):
            if (e, c) == (event, count):
                raise KeyboardInterrupt
        return callback

    with pytest.raises(KeyboardInterrupt):   # in training, after step 3 of 6
        run_search(SETTINGS, run, progress=False, callback=stop_at("train", 3))
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    with pytest.raises(OutputExistsError, match="--resume"):
        run_search(SETTINGS, run, progress=False)
    with pytest.raises(KeyboardInterrupt):   # in the search, after generation 1 of 2
        run_search(SETTINGS, run, resume=True, progress=False, callback=stop_at("search", 1))
    assert json.loads((run / "search_state.json").read_text())["budgets"][0]["generation"] == 1
    assert not (run / "result.json").exists()
    res = run_search(SETTINGS, run, resume=True, progress=False)
    want = finished.result["budgets"][0]
    got = res.result["budgets"][0]
    for key in ("top1", "k", "spec", "flops", "params", "evaluated", "candidate_top1s"):
        assert got[key] == want[key], key
    assert comparable(read_jsonl(run / "search.jsonl")) == \
        comparable(read_jsonl(finished.run_dir / "search.jsonl"))
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [2, 4, 6]


def test_resume_refuses_other_settings(finished, tmp_path):
    other = RunSettings(MODEL, train=SETTINGS.train,
                        search=SearchConfig(flops="50%", population=6, iterations=2, parents=2,
                                            recal_batches=1))
    with pytest.raises(ConfigError, match="search.population 4 -> 6"):
        run_search(other, finished.run_dir, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_search(SETTINGS, tmp_path / "empty", resume=True, progress=False)


def in_process(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    cap = capsys.readouterr()
    return SimpleNamespace(returncode=exc.value.code, stdout=cap.out, stderr=cap.err)


def test_export_and_eval_of_missing_or_foreign_folders_are_one_line(tmp_path, capsys, cli, one_error_line):
    one_error_line(cli("export", tmp_path / "nope"), "does not exist")   # the real executable
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    one_error_line(in_process(capsys, "export", tmp_path / "foreign"), "not a cafeslim run folder")
    one_error_line(in_process(capsys, "eval", tmp_path / "foreign"), "neither an export folder")
    one_error_line(in_process(capsys, "eval", tmp_path / "nope"), "does not exist")


def test_uniform_baseline_needs_no_supernet(tmp_path):
    settings = RunSettings(MODEL, train=SETTINGS.train,
                           search=SearchConfig(flops="50%,30%", method="uniform", recal_batches=1))
    res = run_search(settings, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
    rows = res.result["budgets"]
    assert [r["budget"] for r in rows] == ["50%", "30%"]
    for r in rows:
        lo, hi = r["window"]
        assert lo <= r["flops"] <= hi and r["evaluated"] == 1 and r["checkpoint"] is None
    # No checkpoint: export rebuilds the seeded initial weights and reproduces the top-1.
    rep = export_run(tmp_path / "run", "30%", formats=("pt",))
    assert rep.top1("slimmed") == rows[1]["top1"] and rep.out_dir == tmp_path / "run/export/30pct"
    # Its D_val score is chance (untrained weights): shown as "not trained", never as a number.
    assert res.result["score"]["trained"] is False and rows[0]["selection_score"] is None
    report = (tmp_path / "run" / "report.md").read_text()
    assert "D_val score (selection)" in report and "not trained" in report
    assert f"{100 * rows[0]['top1']:.2f}%" not in report


@pytest.mark.slow
def test_multistage_search(tmp_path):
    settings = RunSettings(MODEL, train=SETTINGS.train,
                           search=SearchConfig(flops="50%", population=4, iterations=2, parents=2,
                                               recal_batches=1, stages=2, alpha=2.0))
    res = run_search(settings, tmp_path / "run", progress=False)
    stages = res.result["stages"]
    assert [s["stage"] for s in stages] == [1, 2] and stages[1]["beta"] == 0.5
    assert stages[0]["budget"] > stages[1]["budget"] == res.result["budgets"][0]["budget_flops"]
    assert res.result["budgets"][0]["checkpoint"] == "stage2/last.pt"
    stage1 = {g: set(v) for g, v in stages[0]["spec"].items()}
    for g, kept in res.result["budgets"][0]["spec"].items():  # stage 2 searched inside stage 1
        assert set(kept) <= stage1.get(g, set(kept))
    rep = export_run(tmp_path / "run", formats=("pt",))
    assert rep.top1("slimmed") == res.result["budgets"][0]["top1"]


@pytest.mark.slow
def test_cli_search_sigkill_resume_export_eval(finished, tmp_path, cli):
    """The real commands, killed with SIGKILL mid-search and resumed."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"train": {k: v for k, v in vars(SETTINGS.train).items()},
                                   "search": {"population": 4, "iterations": 2, "parents": 2,
                                              "recal_batches": 1}}))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cafeslim", "search", MODEL, "--flops", "50%", "--out", str(run)]
    proc = subprocess.Popen(cmd + ["--config", str(cfg)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for marker in ("last.pt", "search_state.json"):   # killed in training, then in the search
        deadline = time.time() + 240
        while not (run / marker).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run / "result.json").exists()
        proc = subprocess.Popen(cmd + ["--resume"], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    proc.kill()
    proc.wait()
    res = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads((run / "result.json").read_text())["budgets"][0]
    assert (got["top1"], got["spec"]) == (finished.result["budgets"][0]["top1"],
                                         finished.result["budgets"][0]["spec"])
    res = cli("export", run)
    assert res.returncode == 0, res.stderr
    assert "onnxruntime" in res.stdout and (run / "export" / "model.onnx").is_file()
    res = cli("eval", run, "--batch-sizes", "1", "--repeats", "3")
    assert res.returncode == 0, res.stderr
    assert "latency onnxruntime b1" in res.stdout
