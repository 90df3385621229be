"""``--method random``: N random widths of the window trained stand-alone, the best kept.

One tiny run (32 px digits, 2 candidates, 1 epoch each), interrupted after its first candidate
and resumed, is shared by the tests.
"""

from __future__ import annotations

import json

import pytest

from cafeslim.config import RunSettings, SearchConfig, TrainConfig
from cafeslim.errors import ConfigError
from cafeslim.pipeline import export_run, run_search
from cafeslim.pipeline.objects import build
from cafeslim.pipeline.random_baseline import RANDOM_DIR, retrain_config

SETTINGS = RunSettings(
    "timm:test_resnet", data="demo",
    train=TrainConfig(epochs=1, batch_size=32, img_size=32, device="cpu", workers=0, seed=3),
    search=SearchConfig(flops="50%", method="random", random_n=2, random_epochs=1))

pytestmark = pytest.mark.usefixtures("one_thread")


def _stop_after_first(what, n):
    if what == "random" and n == 1:
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    run = tmp_path_factory.mktemp("random") / "run"
    with pytest.raises(KeyboardInterrupt):
        run_search(SETTINGS, run, progress=False, callback=_stop_after_first)
    first = [json.loads(x) for x in (run / "search.jsonl").read_text().splitlines()]
    res = run_search(SETTINGS, run, resume=True, progress=False)
    return res, first


def test_chosen_width_is_in_the_window_and_the_argmax(finished):
    res, _ = finished
    b = build(SETTINGS, with_data=False)
    entry = res.result["budgets"][0]
    records = [json.loads(x) for x in (res.run_dir / "search.jsonl").read_text().splitlines()]
    assert len(records) == entry["evaluated"] == 2
    lo, hi = entry["window"]
    for r in records:
        assert lo <= b.fm.flops(b.graph.widths_of(b.space.fixed_spec(r["k"]))) <= hi
        assert 0.0 <= r["top1"] <= 1.0 and r["epochs"] == 1
    best = max(records, key=lambda r: r["top1"])
    assert entry["k"] == best["k"] and entry["top1"] == best["top1"]
    assert res.result["method"] == "random" and entry["checkpoint"] is None
    assert not (res.run_dir / RANDOM_DIR).exists() and not (res.run_dir / "last.pt").exists()
    report = (res.run_dir / "report.md").read_text()
    assert "trained stand-alone and scored on D_val" in report
    assert f"{100 * best['top1']:.2f}%" in report and entry["selection_score"] == best["top1"]


def test_resume_does_not_retrain_a_finished_candidate(finished):
    res, first = finished
    records = [json.loads(x) for x in (res.run_dir / "search.jsonl").read_text().splitlines()]
    assert len(first) == 1 and records[0] == first[0]  # same train_s: not trained again
    assert records[1]["k"] != records[0]["k"]


def test_export_works_on_a_random_run(finished, tmp_path):
    res, _ = finished
    rep = export_run(res.run_dir, formats=("pt",), out_dir=tmp_path / "exp")
    assert (tmp_path / "exp" / "model.pt").is_file()
    assert rep.flops_after == pytest.approx(res.result["budgets"][0]["flops"])


def test_candidates_use_the_train_recipe_compressed():
    b = build(SETTINGS, with_data=False)
    cfg = retrain_config(b)
    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.img_size) == (1, 32, 3, 32)
    assert cfg.opt == "sgd" and 0 < cfg.warmup_epochs < 1
    with pytest.raises(ConfigError, match="random trains no supernet"):
        SearchConfig(method="random", stages=2)
