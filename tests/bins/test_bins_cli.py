"""`cafeslim export --flops` and `cafeslim inspect-bins`, end to end on a tiny timm model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cafeslim.cli.app import main
from cafeslim.export import read_widths_json
from cafeslim.pipeline import uniform_export
from cafeslim.flops import count_flops
from cafeslim.models import create

TINY = "timm:test_resnet"


def cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def test_export_flops_half_end_to_end(tmp_path, capsys):
    out = tmp_path / "half"
    code, stdout, err = cli(capsys, "export", TINY, "--flops", "50%", "--format", "pt", "--out", out)
    assert code == 0, err
    assert "FLOPs" in stdout and "wrote" in stdout
    info = json.loads((out / "widths.json").read_text())
    full, slim_flops, budget = info["flops"]["full"], info["flops"]["slim"], info["budget"]
    assert budget == pytest.approx(0.5 * full, rel=1e-3)
    assert 0.97 * budget * (1 - 1e-4) <= slim_flops <= budget * (1 + 1e-4)
    model = torch.load(out / "model.pt", weights_only=False)
    x = create(TINY).example_input()
    assert count_flops(model, x) == pytest.approx(slim_flops, rel=1e-6)


@pytest.mark.parametrize("args, needle", [
    (["--flops", "10G"], "above the full model"),
    (["--flops", "half"], "cannot read FLOPs budget"),
    (["--flops", "50%", "--uniform", "0.5"], "exactly one of --uniform F, --flops B"),
])
def test_export_budget_errors_are_one_line(tmp_path, capsys, args, needle):
    code, _, err = cli(capsys, "export", TINY, *args, "--format", "pt", "--out", tmp_path / "o")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_uniform_l1_export_and_widths_roundtrip(tmp_path):
    info = create(TINY)
    with torch.no_grad():
        info.model.conv1[0].weight[3].mul_(50)           # make channel 3 the most important
    rep = uniform_export(info, fraction=0.25, order="l1", formats={"pt"}, out_dir=tmp_path / "a")
    assert rep.flops_after < rep.flops_before and rep.params_after < rep.params_before
    spec = read_widths_json(tmp_path / "a" / "widths.json")["index_spec"]
    first = min(spec)
    assert 3 in spec[first] and len(spec[first]) == round(0.25 * 16)
    again = uniform_export(info, widths_file=tmp_path / "a" / "widths.json", formats={"pt"},
                           out_dir=tmp_path / "b")
    assert read_widths_json(tmp_path / "b" / "widths.json")["index_spec"] == spec
    assert again.flops_after == rep.flops_after


def test_inspect_bins_json_and_plot(tmp_path, capsys):
    png = tmp_path / "bins.png"
    code, stdout, err = cli(capsys, "inspect-bins", TINY, "--json", "--plot", png)
    assert code == 0, err
    doc = json.loads(stdout)
    assert set(doc) == {"model", "beta", "log10_space", "groups"}
    assert doc["model"] == TINY and doc["beta"] == 1.0 and doc["log10_space"] > 0
    for row in doc["groups"]:
        assert set(row) == {"id", "channels", "sensitivity", "bin_size", "bins", "layers"}
        assert row["bins"] == -(-row["channels"] // row["bin_size"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_bins_table_and_options(capsys):
    code, stdout, err = cli(capsys, "inspect-bins", TINY, "--beta", "0.5", "--divisor", "2",
                            "--stages", "3", "--alpha", "2", "--min-width", "0.25")
    assert code == 0, err
    for needle in ("bin size", "over 3 stages", "FLOPs per bin", "candidates per width"):
        assert needle in stdout
    code, stdout, _ = cli(capsys, "inspect-bins", TINY, "--bins", "uniform", "--num-bins", "4", "--json")
    assert code == 0 and all(row["bins"] <= 4 for row in json.loads(stdout)["groups"])
    code, _, err = cli(capsys, "inspect-bins", TINY, "--num-bins", "4")
    assert code == 2 and "--bins uniform" in err


def test_help_lists_inspect_bins():
    res = subprocess.run([sys.executable, "-m", "cafeslim", "inspect-bins", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "cafeslim inspect-bins " in res.stdout
