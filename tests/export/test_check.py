"""``check_model`` on every timm ``test_*`` model and a handful of small torchvision models,
its three-way statuses, and the ``cafeslim check`` renderers and ``--json`` document.

The model slice is the unit-test part of ``benchmarks/zoo.py``: each model must have
searchable groups and pass every property (runs, output shape, functional equivalence, FLOPs
model vs fvcore, ONNX and .pt2 round trips) at random prefix and scattered IndexSpecs, each
with a proven sensitivity. A model whose comparisons cannot fail is *not verified*.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from cafeslim.export.verify import (EQUIV_RTOL, FAILED, NOT_VERIFIED, PASSED, SENSITIVITY_FACTOR,
                                    CheckReport, check_model, overall_status)

TIMM_TEST_MODELS = timm.list_models("test_*")
TV_MODELS = ["resnet18", "mobilenet_v3_small", "squeezenet1_0", "regnet_x_400mf", "shufflenet_v2_x0_5"]
ROOT = Path(__file__).resolve().parents[2]
NEED = SENSITIVITY_FACTOR * EQUIV_RTOL


def _assert_passed(report):
    bad = {k: report.details.get(k) for k, s in report.statuses.items() if s != PASSED}
    assert report.status == PASSED and report.passed, bad
    assert report.searchable_groups > 0
    assert report.sensitivity["equivalence"] >= NEED and report.sensitivity["input"] >= NEED


@pytest.mark.parametrize("name", TIMM_TEST_MODELS)
def test_check_passes_on_timm_test_models(name):
    model = timm.create_model(name)
    size = model.pretrained_cfg["input_size"]
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    _assert_passed(check_model(model, x, name, n_specs=2))


@pytest.mark.parametrize("name", TV_MODELS)
def test_check_passes_on_small_torchvision_models(name):
    model = torchvision.models.get_model(name)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    _assert_passed(check_model(model, x, name, n_specs=2))


def test_check_reports_a_model_without_searchable_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))  # input and output only: all fixed
    report = check_model(model, torch.randn(1, 3, 8, 8), "tiny", n_specs=1)
    assert not report.passed and report.status == FAILED
    assert report.statuses["searchable"] == FAILED and report.statuses["onnx"] == NOT_VERIFIED


def _zero_head_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def test_a_constant_output_is_not_verified_never_passed():
    net = _zero_head_net()
    x = torch.randn(1, 3, 16, 16)
    report = check_model(net, x, "zero-head", n_specs=2, sensitize=False)
    assert report.status == NOT_VERIFIED and not report.passed
    for prop in ("equivalence", "onnx", "pt2"):
        assert report.statuses[prop] == NOT_VERIFIED, (prop, report.details[prop])
    assert report.sensitivity["equivalence"] == 0.0 and report.sensitivity["input"] == 0.0
    assert report.statuses["runs"] == PASSED and report.statuses["flops"] == PASSED
    # the default re-draw gives the head weights, and everything is verified
    redrawn = check_model(net, x, "zero-head", n_specs=2)
    _assert_passed(redrawn)
    assert redrawn.redrawn > 0 and float(net[-1].weight.detach().abs().max()) == 0.0  # user's model untouched


class _TimesZero(nn.Module):
    """Output = 0 * features: no weight re-draw can make it depend on anything."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.body(x)) * 0.0


def test_a_model_that_multiplies_by_zero_is_not_verified():
    report = check_model(_TimesZero(), torch.randn(1, 3, 16, 16), "times-zero", n_specs=2)
    assert report.status == NOT_VERIFIED
    assert report.statuses["equivalence"] == NOT_VERIFIED and report.statuses["onnx"] == NOT_VERIFIED


def test_exports_of_a_weakly_input_dependent_model_are_verified_on_several_inputs():
    # Random-weight EfficientNets move their pooled output by only 1e-3 between inputs; their
    # exports match to 1e-7, far below that, so the comparison on both inputs proves them.
    net = _zero_head_net()
    with torch.no_grad():
        net[-1].weight.normal_(std=1e-3)
        net[-1].bias.normal_(std=1.0)
    report = check_model(net, torch.randn(1, 3, 16, 16), "weak", n_specs=1, sensitize=False)
    assert report.sensitivity["input"] < NEED  # the old fixed floor would not have verified it
    for prop in ("onnx", "pt2"):
        assert report.statuses[prop] == PASSED, report.details[prop]
        assert "on 2 inputs" in report.details[prop]


def test_overall_status():
    assert overall_status({"a": PASSED, "b": PASSED}) == PASSED
    assert overall_status({"a": PASSED, "b": NOT_VERIFIED}) == NOT_VERIFIED
    assert overall_status({"a": FAILED, "b": NOT_VERIFIED}) == FAILED


def test_check_renderers(capsys):
    from cafeslim.cli.check import check_json, render_check

    report = CheckReport("resnet50", {"runs": PASSED, "onnx": FAILED, "pt2": NOT_VERIFIED},
                         {"onnx": "max diff 3e-3", "pt2": "output is constant"}, 37, 2,
                         sensitivity={"input": 0.0})
    doc = check_json("tv:resnet50", report)
    assert doc["model"] == "tv:resnet50" and doc["status"] == FAILED and doc["passed"] is False
    assert doc["statuses"] == {"runs": PASSED, "onnx": FAILED, "pt2": NOT_VERIFIED}
    assert doc["properties"] == {"runs": True, "onnx": False, "pt2": False}
    assert doc["searchable_groups"] == 37 and doc["fixed_groups"] == 2
    assert json.loads(json.dumps(doc)) == doc
    render_check("tv:resnet50", report)
    text = capsys.readouterr().out
    assert "✓ runs" in text and "✗ onnx  max diff 3e-3" in text and "FAIL" in text
    assert "? pt2  not verified  output is constant" in text
    report.statuses["onnx"] = PASSED
    render_check("tv:resnet50", report)
    assert "NOT VERIFIED: tv:resnet50" in capsys.readouterr().out


def _cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cafeslim", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_check_json_is_one_document_on_stdout():
    res = _cli("check", "timm:test_resnet", "--json", "--specs", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)  # the whole of stdout: one JSON document, nothing else
    assert doc["status"] == PASSED and doc["statuses"]["onnx"] == PASSED


def test_c_level_stdout_goes_to_stderr_during_exports():
    # what the TorchScript exporter's fallback does: printf on file descriptor 1
    code = ("import os, sys\n"
            "from cafeslim.export.formats import stdout_to_stderr\n"
            "with stdout_to_stderr():\n"
            "    os.write(1, b'graph(%x : Float)\\n'); print('python print')\n"
            "print('after')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert res.stdout == "after\n"
    assert "graph(%x : Float)" in res.stderr and "python print" in res.stderr


@pytest.mark.slow
def test_check_json_on_a_model_whose_onnx_export_prints_its_graph():
    res = _cli("check", "timm:haloregnetz_b", "--json", "--specs", "1", timeout=900)
    assert res.returncode in (0, 1), res.stderr[-2000:]
    assert json.loads(res.stdout)["model"] == "timm:haloregnetz_b"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "vit_b_16"])
def test_once_vacuous_torchvision_models_pass_with_sensitivity(name):
    # at default init googlenet's output ignores its input and vit's head outputs zeros
    model = torchvision.models.get_model(name)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    report = check_model(model, x, name, n_specs=2)
    _assert_passed(report)
