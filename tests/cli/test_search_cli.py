"""``cafeslim search`` / ``export RUN`` / ``eval`` at the command line: settings and errors.

Everything here fails (or resolves) before any model is built. Commands run in-process through
:func:`cafeslim.cli.app.main` (the console script's entry point, with its error handling); one
subprocess checks the real executable.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import yaml

from cafeslim.cli.app import main
from cafeslim.config import resolve_settings
from cafeslim.pipeline.rundir import default_run_dir
from cafeslim.errors import ConfigError
from cafeslim.config import DEMO_HARD_TRAIN, DEMO_PRESET, MIN_STEPS, RunSettings, SearchConfig

MODEL = "timm:test_resnet"


@pytest.fixture
def run(capsys):
    def go(*args):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        cap = capsys.readouterr()
        return SimpleNamespace(returncode=exc.value.code, stdout=cap.out, stderr=cap.err)
    return go



def flags(**sections):
    return {"train": {}, "search": {}, "bins": {}, **sections}


def test_precedence_flags_over_yaml_over_demo_preset_over_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"epochs": 7, "batch-size": 16},
                                   "search": {"population": 30, "flops": "2G"},
                                   "bins": {"beta": 2}}))
    s = resolve_settings(MODEL, cfg, None, flags(train={"epochs": 2, "seed": None},
                                                 search={"flops": "50%"}))
    assert (s.train.epochs, s.train.batch_size, s.train.seed) == (2, 16, 0)   # flag, YAML, default
    assert (s.search.flops, s.search.population) == ("50%", 30)
    assert s.search.iterations == DEMO_PRESET["search"]["iterations"]          # demo preset
    assert s.bins.beta == 2.0 and s.data == "demo"
    real = resolve_settings(MODEL, None, str(tmp_path), flags(search={"flops": "1G"}))
    assert (real.search.population, real.search.iterations, real.train.epochs) == (40, 50, None)
    # None: 10 epochs, or as many as give MIN_STEPS steps on a small folder
    assert (real.train.epochs_for(10_000), real.train.epochs_for(40)) == (10, MIN_STEPS // 40)
    hard = resolve_settings(MODEL, None, "demo-hard", flags(search={"flops": "1G"}))
    assert (hard.train.epochs, hard.train.lr) == (DEMO_HARD_TRAIN["epochs"], DEMO_HARD_TRAIN["lr"])


def test_fixed_method_means_offset_zero():
    s = resolve_settings(MODEL, None, None, flags(search={"flops": "50%", "method": "fixed"}))
    assert s.train.offset == 0
    with pytest.raises(ConfigError, match="fixed is r = 0"):
        resolve_settings(MODEL, None, None,
                         flags(search={"method": "fixed"}, train={"offset": 1}))


def test_bad_settings(tmp_path):
    (tmp_path / "c.yaml").write_text("serch: {population: 3}\n")
    with pytest.raises(ConfigError, match="unknown config key.*'serch'"):
        resolve_settings(MODEL, tmp_path / "c.yaml", None, flags())
    with pytest.raises(ConfigError, match="population must be at least 2"):
        resolve_settings(MODEL, None, None, flags(search={"population": 1}))
    with pytest.raises(ConfigError, match="unknown search setting 'populaton'"):
        resolve_settings(MODEL, {"search": {"populaton": 3}}, None, flags())


def test_default_run_dir():
    s = RunSettings("tv:resnet18", search=SearchConfig(flops="1G,50%", method="uniform"))
    assert str(default_run_dir(s)) == "runs/resnet18-1G_50pct-uniform"


@pytest.mark.parametrize("cmd", ["search", "eval"])
def test_help_has_examples(cmd):
    res = subprocess.run([sys.executable, "-m", "cafeslim", cmd, "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"cafeslim {cmd} " in res.stdout


def test_search_errors_are_one_line(tmp_path, run, one_error_line):
    one_error_line(run("search", MODEL, "--out", tmp_path / "r"), "--flops")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    one_error_line(run("search", MODEL, "--flops", "50%", "--out", tmp_path / "busy"),
                   "not empty", "--resume", "--force")
    one_error_line(run("search", MODEL, "--flops", "50%", "--out", tmp_path / "r", "--resume"),
                   "does not exist")
    one_error_line(run("search", MODEL, "--flops", "50%", "--method", "fixed", "--offset", "2",
                       "--out", tmp_path / "r"), "--offset")


def test_export_run_rejects_model_options(tmp_path, run, one_error_line):
    one_error_line(run("export", tmp_path / "run", "--uniform", "0.5"), "--uniform")
    one_error_line(run("export", "tv:resnet18", "--budget", "50%", "--out", tmp_path / "o"),
                   "--budget")
    one_error_line(run("eval", tmp_path / "missing"), "does not exist")


def _result(method):
    row = {"budget": "50%", "flops": 2e6, "flops_ratio": 0.49, "params": 2e5, "params_ratio": 0.5,
           "top1": 0.1234, "evaluated": 1}
    return {"model": MODEL, "method": method, "full": {"flops": 4e6, "params": 4e5},
            "seconds": 3.0, "budgets": [row]}


@pytest.mark.parametrize("method", ["cafenet", "uniform"])
def test_search_table_labels_the_selection_score(method, capsys):
    from pathlib import Path

    from cafeslim.cli.search import render_result

    render_result(Path("runs/x"), _result(method))
    text = " ".join(capsys.readouterr().out.split())
    assert "D_val score" in text and "(selection)" in text and "not the model's accuracy" in text
    assert "cafeslim train runs/x" in text and "cafeslim eval runs/x/train" in text
    # Uniform trains no weights: its chance-level D_val top-1 is never printed.
    assert ("12.34%" in text) == (method != "uniform")
    assert ("not trained" in text) == (method == "uniform")


def test_random_and_sampling_flags_resolve():
    s = resolve_settings(MODEL, {"search": {"random_n": 5}, "train": {"sampling": "mixed"}}, None,
                         flags(search={"flops": "50%", "method": "random", "random_epochs": 2},
                               train={"sampling_mix": 0.25}))
    assert (s.search.method, s.search.random_n, s.search.random_epochs) == ("random", 5, 2)
    assert (s.train.sampling, s.train.sampling_mix) == ("mixed", 0.25)
    assert str(default_run_dir(s)) == "runs/test_resnet-50pct-random"
    with pytest.raises(ConfigError, match="random trains no supernet"):
        resolve_settings(MODEL, None, None, flags(search={"method": "random", "stages": 2}))
    with pytest.raises(ConfigError, match="invalid value 'budgets' for sampling"):
        resolve_settings(MODEL, None, None, flags(train={"sampling": "budgets"}))


def test_random_and_sampling_flags_on_the_command_line(tmp_path, run, one_error_line):
    one_error_line(run("search", MODEL, "--flops", "50%", "--method", "random", "--random-n", "3",
                       "--random-epochs", "1", "--stages", "2", "--out", tmp_path / "r"),
                   "random trains no supernet")
    one_error_line(run("search", MODEL, "--flops", "50%", "--sampling", "mixed",
                       "--sampling-mix", "2", "--out", tmp_path / "r"), "sampling_mix")


def test_aug_flags_over_yaml_over_defaults_into_config_yaml(tmp_path, run, monkeypatch):
    import cafeslim.pipeline
    from cafeslim.data.loaders import train_augmentation
    from cafeslim.pipeline import start_run

    def fake_search(settings, run_dir, **kw):  # writes config.yaml as the real run does
        start_run(settings, run_dir, with_data=False)
        raise SystemExit(0)

    monkeypatch.setattr(cafeslim.pipeline, "run_search", fake_search)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"aug": "timm", "scale": [0.4, 1], "hflip": 0.3,
                                             "reprob": 0.2}}))
    res = run("search", MODEL, "--flops", "50%", "--config", cfg, "--hflip", "0.1",
              "--ratio", "0.9", "1.1", "--out", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    t = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]
    assert (t["aug"], t["scale"], t["hflip"], t["reprob"]) == ("timm", [0.4, 1.0], 0.1, 0.2)
    assert (t["ratio"], t["aa"], t["shift"]) == ([0.9, 1.1], None, None)   # flag, defaults
    res = run("search", MODEL, "--flops", "50%", "--no-aug", "--out", tmp_path / "n")
    assert yaml.safe_load((tmp_path / "n" / "config.yaml").read_text())["train"]["aug"] == "none"
    # The demo's default: a padded random crop for the supernet, not RandomResizedCrop.
    demo = resolve_settings(MODEL, None, None, flags(search={"flops": "50%"}))
    assert demo.train.aug == "auto" and train_augmentation(demo.train, "demo", 64) == "shift"
    assert train_augmentation(demo.train, "DIR", 224) == "timm"
    assert train_augmentation(replace(demo.train, scale=(0.5, 1.0)), "demo", 64) == "timm"


def test_demo_search_trains_on_shifted_digits(one_thread):
    from cafeslim.data.augment import PadCrop
    from cafeslim.pipeline.objects import build

    b = build(resolve_settings(MODEL, None, None, flags(search={"flops": "50%"})))
    assert isinstance(b.data.train.dataset.dataset, PadCrop)
    assert b.data.train.dataset.dataset.pad == 2 and b.data.train.dataset.dataset.hflip == 0.0


def test_contradicting_aug_flags_are_one_line(tmp_path, run, one_error_line):
    one_error_line(run("search", MODEL, "--flops", "50%", "--aug", "shift", "--aa", "rand-m9",
                       "--out", tmp_path / "r"), "--aa", "--aug shift")
    one_error_line(run("search", MODEL, "--flops", "50%", "--aug", "timm", "--no-aug",
                       "--out", tmp_path / "r"), "--no-aug")
    one_error_line(run("search", MODEL, "--flops", "50%", "--scale", "0.9", "0.2",
                       "--out", tmp_path / "r"), "scale")
