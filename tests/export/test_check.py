"""``check_model`` on every timm ``test_*`` model and a handful of small torchvision models.

This is the unit-test slice of ``benchmarks/zoo.py``: each model must have searchable
groups and pass every property (runs, output shape, functional equivalence, FLOPs model vs
fvcore, ONNX and .pt2 round trips) at random prefix and scattered IndexSpecs.
"""

import timm
import torch
import torchvision
import pytest

from cafeslim.export.verify import check_model

TIMM_TEST_MODELS = timm.list_models("test_*")
TV_MODELS = ["resnet18", "mobilenet_v3_small", "squeezenet1_0", "regnet_x_400mf", "shufflenet_v2_x0_5"]


def _assert_passed(report):
    failed = {k: report.details.get(k) for k, ok in report.properties.items() if not ok}
    assert report.passed, failed
    assert report.searchable_groups > 0


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
    assert not report.passed and not report.properties["searchable"]
