"""Structured outputs and models traced in part: segmentation, video, detection.

The smallest model of each kind at a small input: lraspp_mobilenet_v3_large (segmentation,
a dict output), r3d_18 (video, Conv3d/BatchNorm3d), ssdlite320_mobilenet_v3_large (detection:
backbone traced, the whole model slimmed in place and compared).
"""

import pytest
import torch

from cafeslim.export.compare import leaf_names, rel_diff as _rel
from cafeslim.export.verify import check_info
from cafeslim.export.whole import slim_whole
from cafeslim.flops import count_flops
from cafeslim.models import create
from cafeslim.pipeline import analyze_info


def test_leaves_are_compared_each_on_its_own_scale():
    a = {"out": torch.full((2,), 1000.0), "aux": torch.ones(2)}
    b = {"out": torch.full((2,), 1000.0), "aux": torch.full((2,), 1.01)}
    # on the output's overall scale the aux difference would be 1e-5; on its own it is 1e-2
    assert _rel(a, b) == pytest.approx(0.01, rel=1e-3)
    assert _rel(a, b, worst="min") == 0.0  # "out" did not change at all
    assert leaf_names(a) == ["['out']", "['aux']"] and leaf_names(torch.zeros(1)) == ["output"]


def test_segmentation_dict_output_is_fixed_and_checked(one_thread):
    info = create("tv:lraspp_mobilenet_v3_large", img_size=32)
    graph = analyze_info(info, flops=False).graph
    heads = [g for g in graph.groups if "classifier.low_classifier" in g.producers]
    # the dict output's 21 class channels: fixed by the output, not searchable
    assert len(heads) == 1 and heads[0].channels == 21 and not heads[0].searchable
    assert "model output" in heads[0].reasons
    report = check_info(info, n_specs=1, formats=False)
    assert report.status == "passed", report.details
    assert report.leaves == ["['out']"]


def test_video_model_checks(one_thread):
    info = create("tv:r3d_18", img_size=16)
    report = check_info(info, n_specs=1, formats=False)
    assert report.status == "passed", report.details
    assert report.searchable_groups > 0 and report.fixed_reasons.get("model output") == 1


@pytest.fixture(scope="module")
def ssdlite():
    info = create("tv:ssdlite320_mobilenet_v3_large", img_size=128)
    return info, analyze_info(info)


def test_detection_backbone_is_traced_with_head_contract(ssdlite):
    info, a = ssdlite
    assert a.example.shape == (1, 3, 128, 128)
    fixed = [g for g in a.graph.fixed if info.part_reason in g.reasons]
    assert fixed and all(not g.searchable for g in fixed)
    assert len(a.graph.searchable) > 10


def test_slimmed_detector_keeps_its_outputs_and_flops(ssdlite, one_thread):
    info, a = ssdlite
    half = a.graph.prefix_spec({g.id: max(g.blocks, g.channels // 2 // g.blocks * g.blocks)
                                for g in a.graph.searchable})
    small = slim_whole(info.model, info.part, a.graph, half).eval()
    assert info.model.backbone is not small.backbone
    with torch.no_grad():
        before, after = info.model(*info.model_inputs()), small(*info.model_inputs())
    assert [sorted(d) for d in after] == [sorted(d) for d in before] == [["boxes", "labels", "scores"]]
    assert after[0]["boxes"].shape[1:] == (4,)
    measured = count_flops(small.backbone, a.example)
    assert measured < 0.7 * a.fm.full
    assert abs(a.fm.flops(a.graph.widths_of(half)) - measured) <= 0.005 * measured


@pytest.mark.slow
def test_detector_check_compares_final_outputs(one_thread):
    info = create("tv:ssdlite320_mobilenet_v3_large", img_size=128)
    report = check_info(info, n_specs=1)
    assert report.status == "passed", report.details
    assert report.statuses["final_outputs"] == "passed"
    assert report.final["leaves"] == ["[0]['boxes']", "[0]['scores']", "[0]['labels']"]
    assert report.final["thresholds_lowered"]  # a random detector returns no box at 0.05


@pytest.mark.slow
def test_uniform_export_of_a_detector_writes_the_whole_model(tmp_path, one_thread):
    from cafeslim.pipeline.uniform import uniform_export

    info = create("tv:ssdlite320_mobilenet_v3_large", img_size=128)
    rep = uniform_export(info, fraction=0.5, out_dir=tmp_path / "out")
    assert not rep.errors, rep.errors
    assert (tmp_path / "out" / "backbone" / "model.onnx").is_file()
    whole = torch.load(tmp_path / "out" / "model.pt", weights_only=False).eval()
    with torch.no_grad():
        dets = whole(*info.model_inputs())
    assert sorted(dets[0]) == ["boxes", "labels", "scores"]
    assert rep.flops_after < 0.6 * rep.flops_before  # the backbone's FLOPs
