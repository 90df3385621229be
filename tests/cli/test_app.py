"""The command line as a user runs it: a subprocess with exit codes and stderr."""

import subprocess
import sys

import pytest


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "cafeslim", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands():
    res = run("--help")
    assert res.returncode == 0, res.stderr
    for cmd in ("inspect", "check", "export"):
        assert cmd in res.stdout


@pytest.mark.parametrize("cmd", ["inspect", "check", "export"])
def test_command_help_has_examples(cmd):
    res = run(cmd, "--help")
    assert res.returncode == 0, res.stderr
    assert f"cafeslim {cmd} " in res.stdout


def _one_error_line(res, *needles):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in res.stderr + res.stdout
    for needle in needles:
        assert needle in lines[0]


def test_unknown_model_is_one_line_exit_2():
    _one_error_line(run("inspect", "resnt50"), "resnt50", "did you mean", "resnet50")


def test_missing_callable_is_one_line_exit_2():
    _one_error_line(run("check", "no_such_pkg.models:build"), "no_such_pkg")


def test_non_empty_output_folder_refused(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    _one_error_line(run("export", "tv:resnet18", "--uniform", "0.5", "--out", str(tmp_path)),
                    "not empty", "--force")


def test_missing_weights_file(tmp_path):
    _one_error_line(run("inspect", "timm:test_resnet", "--weights", str(tmp_path / "w.pt")),
                    "does not exist")


def test_export_needs_uniform_or_widths(tmp_path):
    _one_error_line(run("export", "tv:resnet18", "--out", str(tmp_path / "o")), "--uniform")
    _one_error_line(run("export", "tv:resnet18", "--uniform", "0.5", "--format", "pt,tflite",
                        "--out", str(tmp_path / "o")), "--format")


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    from cafeslim.cli import app as app_module
    from cafeslim.cli import inspect as inspect_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect_module, "load_model", interrupted)
    with pytest.raises(SystemExit) as exc:
        app_module.main(["inspect", "timm:test_resnet"])
    assert exc.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_usage_error_exit_2():
    res = run("inspect", "timm:test_resnet", "--bogus-flag")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


# --- renderers, on hand-made reports (the library functions are tested in their own folders) ---

def _graph():
    from cafeslim.graph.channel_graph import ChannelGraph, Group, Member

    conv = [Member("layer1.0.conv1", "weight", 0, role="out"), Member("layer1.0.bn1", "weight", 0),
            Member("layer1.0.bn1", "bias", 0), Member("layer1.0.conv2", "weight", 1, role="in"),
            Member("layer1.1.conv1", "weight", 1, role="in"), Member("x", "weight", 1)]
    return ChannelGraph(
        groups=[Group(0, 64, conv),
                Group(1, 3, [Member("conv1", "weight", 1)], searchable=False,
                      reasons=["model input [x[:, :3]]"])],
        ops=[], input_shape=(1, 3, 224, 224), source="tv:resnet18")


def test_inspect_json_and_table(capsys):
    from cafeslim.cli.inspect import inspect_json, render_inspect

    data = inspect_json("tv:resnet18", _graph(), 1_814_073_344, 11_689_512)
    assert set(data) == {"model", "flops", "params", "groups"}
    g0, g1 = data["groups"]
    assert set(g0) == {"id", "channels", "searchable", "reason", "members"}
    assert g0["members"][:2] == ["layer1.0.conv1.weight", "layer1.0.bn1.weight"]
    assert g1 == {"id": 1, "channels": 3, "searchable": False, "reason": "model input [x[:, :3]]",
                  "members": ["conv1.weight"]}
    render_inspect("tv:resnet18", _graph(), 1_814_073_344, 11_689_512)
    text = capsys.readouterr().out
    assert "+2 more" in text and "[x[:, :3]]" in text and "1.81G" in text


def test_export_renderer(capsys):
    # the check renderers' test lives in tests/export/test_check.py
    from types import SimpleNamespace

    from cafeslim.cli.export import render_export

    render_export("tv:resnet18", SimpleNamespace(flops_before=1.8e9, flops_after=0.45e9,
                                                 params_before=11.7e6, params_after=3e6,
                                                 files=["exports/r18/model.pt"]))
    text = capsys.readouterr().out
    assert "1.80G → 450.00M (0.250×)" in text and "model.pt" in text and "only" not in text
    render_export("tv:fasterrcnn_resnet50_fpn", SimpleNamespace(
        flops_before=8e9, flops_after=4e9, params_before=41e6, params_after=30e6, files=[]), "backbone")
    assert "(0.500×)  (backbone only)" in capsys.readouterr().out
