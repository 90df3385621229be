"""Export files: .pt / .pt2 / .onnx round trips on a small slimmed model, widths.json."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cafeslim.errors import ConfigError, SpecError
from cafeslim.export import (
    ExportError,
    export_model,
    read_widths_json,
    save_onnx,
    save_pt2,
    slim,
    widths_info,
    write_widths_json,
)
from cafeslim.graph.channel_graph import ChannelGraph, Group, Member


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def small_graph():
    bn = lambda m: [Member(m, n, 0, role="norm") for n in ("weight", "bias", "running_mean", "running_var")]  # noqa: E731
    return ChannelGraph([
        Group(0, 3, [Member("0", "weight", 1, role="in")], searchable=False, reasons=["model input"]),
        Group(1, 8, [Member("0", "weight", 0, role="out"), Member("0", "bias", 0, role="out"), *bn("1"),
                     Member("3", "weight", 0, role="out"), Member("3", "bias", 0, role="out"), *bn("4"),
                     Member("8", "weight", 1, role="in")], producers=["0"]),
        Group(2, 4, [Member("8", "weight", 0, role="out"), Member("8", "bias", 0, role="out")],
              searchable=False, reasons=["model output"]),
    ], [], (2, 3, 8, 8), source="small_net")


SPEC = {1: [0, 3, 4, 6, 7]}


@pytest.fixture()
def slimmed():
    model, graph = small_net(), small_graph()
    return model, graph, slim(model, graph, SPEC), torch.randn(2, 3, 8, 8)


def test_export_all_formats_round_trip(tmp_path, slimmed):
    model, graph, small, x = slimmed
    info = widths_info(graph, SPEC, slim_model=small, original=model, flops=1234.0, full_flops=2000.0)
    res = export_model(small, x, tmp_path, {"pt", "pt2", "onnx"}, info)
    assert res.ok, res.errors
    assert set(res.paths) == {"pt", "pt2", "onnx", "widths"}
    assert res.parity["onnx"] <= 1e-4 and res.parity["pt2"] <= 1e-4
    with torch.no_grad():
        ref = small(x)
        back = torch.load(res.paths["pt"], weights_only=False)
        assert torch.equal(back.eval()(x), ref)
        prog = torch.export.load(str(res.paths["pt2"])).module()
        assert torch.allclose(prog(x), ref, atol=1e-5)
        assert prog(torch.randn(5, 3, 8, 8)).shape == (5, 4)  # batch stays dynamic
    import onnxruntime as ort
    sess = ort.InferenceSession(str(res.paths["onnx"]), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": torch.randn(3, 3, 8, 8).numpy()})[0]
    assert out.shape == (3, 4)
    assert json.loads(json.dumps(res.to_json()))["ok"] is True


def test_widths_json_round_trip(tmp_path, slimmed):
    model, graph, small, _ = slimmed
    info = widths_info(graph, SPEC, source="small_net", slim_model=small, original=model, flops=10.0)
    path = write_widths_json(tmp_path / "widths.json", info)
    back = read_widths_json(path, graph)
    assert back["index_spec"] == SPEC
    assert back["widths"] == {"1": 5}
    assert back["layers"]["0"]["out"] == 5 and back["layers"]["0"]["full"]["out"] == 8
    assert back["layers"]["3"]["groups"] == 5
    assert back["params"]["slim"] == sum(p.numel() for p in small.parameters())
    assert back["graph"] == {"tracer": "fx", "groups": 3, "searchable": 1, "fixed": 2}
    assert slim(model, graph, back["index_spec"])[0].out_channels == 5


@pytest.mark.parametrize("text, match", [
    ("not json", "cannot read"),
    ("[1, 2]", "not a cafeslim widths file"),
    ('{"widths": {}}', "not a cafeslim widths file"),
    ('{"index_spec": {"a": [1]}}', "malformed"),
    ('{"index_spec": {"1": [0, 99]}}', "does not fit"),
    ('{"index_spec": {"0": [0]}}', "fixed"),
    ('{"index_spec": {"1": [0]}, "groups": [{"id": 1, "channels": 16}]}', "had 16 channels"),
])
def test_read_widths_json_rejects_malformed(tmp_path, text, match):
    path = tmp_path / "widths.json"
    path.write_text(text)
    with pytest.raises(SpecError, match=match):
        read_widths_json(path, small_graph())


def test_missing_widths_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        read_widths_json(tmp_path / "nope.json")


def test_unknown_format(tmp_path, slimmed):
    with pytest.raises(ConfigError, match="tflite"):
        export_model(slimmed[2], slimmed[3], tmp_path, {"tflite"})


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.export cannot capture it, ONNX freezes one branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_exporter_failures_are_recorded_not_raised(tmp_path):
    model, x = Untraceable().eval(), torch.ones(2, 4)
    res = export_model(model, x, tmp_path, {"pt", "pt2"}, None)
    assert "pt" in res.paths and "widths" not in res.paths
    assert not res.ok and "pt2" in res.errors and "torch.export failed" in res.errors["pt2"]
    with pytest.raises(ExportError):
        save_pt2(model, x, tmp_path / "m.pt2")


def test_onnx_parity_check(tmp_path, slimmed):
    small, x = slimmed[2], slimmed[3]
    diff = save_onnx(small, x, tmp_path / "m.onnx", rtol=1e-4)
    assert diff < 1e-4
    with pytest.raises(ExportError, match="differs"):
        save_onnx(small, x, tmp_path / "m2.onnx", atol=-1.0)


def test_an_export_that_only_matches_at_the_example_fails_on_other_inputs(tmp_path):
    # The TorchScript exporter traces the branch the example takes: right at the example,
    # wrong wherever the sign flips. Only a comparison on another input can see it.
    model, x = Untraceable().eval(), torch.ones(2, 4)
    assert save_onnx(model, x, tmp_path / "m.onnx", rtol=1e-4) < 1e-6
    with pytest.raises(ExportError, match="model.onnx differs"):
        save_onnx(model, x, tmp_path / "m2.onnx", rtol=1e-4, check_inputs=[-x])
