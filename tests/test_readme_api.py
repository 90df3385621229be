"""The README's "Python API" example runs as written, and does what it says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cafeslim.export import read_widths_json
from cafeslim.flops import count_flops

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def api_example(readme_block):
    """The first ```python block under ``## Python API`` in README.md."""
    return readme_block("Python API")


def test_the_example_is_short(api_example):
    assert len(api_example.strip().splitlines()) <= 15


@pytest.fixture(scope="module")
def ran(tmp_path_factory, api_example):
    folder = tmp_path_factory.mktemp("readme")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme_example"}
    cwd = Path.cwd()
    try:
        os.chdir(folder)  # the example writes "exported/" where it runs
        exec(compile(api_example, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    return folder, namespace


def test_the_exported_model_is_within_budget_and_keeps_its_output(ran):
    folder, ns = ran
    model, small, x, result = ns["model"], ns["small"], ns["x"], ns["result"]
    full = count_flops(model, x)
    got = count_flops(small, x)
    assert result.budget == pytest.approx(0.5 * full)
    assert got == result.flops  # the FLOPs model is exact on this model
    assert 0.97 * result.budget <= got <= result.budget  # inside the search window
    with torch.no_grad():  # eval: a train-mode forward would move the BN statistics
        assert small.eval()(x).shape == model.eval()(x).shape == (2, 10)
    channels = {g.id: g.channels for g in ns["graph"].searchable}
    assert set(result.widths) == set(channels)
    assert all(1 <= result.widths[g] <= c for g, c in channels.items())


def test_the_exported_files_load_and_match(ran):
    folder, ns = ran
    out = folder / "exported"
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.pt2", "model.onnx", "widths.json"}
    info = read_widths_json(out / "widths.json", ns["graph"])
    assert {int(g): w for g, w in info["widths"].items()} == ns["result"].widths
    loaded = torch.load(out / "model.pt", weights_only=False).eval()
    small, x = ns["small"].eval(), ns["x"]
    with torch.no_grad():
        assert torch.allclose(loaded(x), small(x), atol=1e-6)
    program = torch.export.load(out / "model.pt2")
    with torch.no_grad():
        assert torch.allclose(program.module()(x), small(x), atol=1e-5)
