"""Backbone width transfer (issue 10 item 5): a classification export's widths on a detector's
or segmentation model's backbone, matched by module path."""

import json
import subprocess
import sys

import pytest
import torch

import cafeslim
from cafeslim.errors import TransferError
from cafeslim.export.transfer import SHAPE_KEYS, best_prefix, read_widths
from cafeslim.graph.channel_graph import spec_from_json
from cafeslim.models import create
from cafeslim.ops import module_handler
from cafeslim.pipeline.uniform import uniform_export


def varied_widths(name, path):
    """A widths.json of ``name`` whose groups keep 3/8 … 7/8 of their channels, the *last* ones:
    a transfer that mixed up two groups or re-took the first channels would show."""
    from cafeslim.bins import channel_space
    from cafeslim.export import slim, widths_info, write_widths_json
    from cafeslim.pipeline.objects import analyze_info

    info = create(name, img_size=64)
    a = analyze_info(info)
    space = channel_space(a.graph, a.fm)
    keep = [max(1, g.num_bins * (3 + i % 5) // 8) for i, g in enumerate(space.groups)]
    spec = space.spec([range(g.num_bins - k, g.num_bins) for g, k in zip(space.groups, keep)])
    small = slim(info.model, a.graph, spec)
    return write_widths_json(path, widths_info(a.graph, spec, source=info.name, slim_model=small,
                                               original=info.model))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Classification exports made once: name -> widths.json (varied widths, see above)."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = varied_widths(name, tmp_path_factory.mktemp("w") / "widths.json")
        return made[name]
    return get


def _shape(mod):
    row = module_handler(mod).describe(mod)
    return {k: row[k] for k in SHAPE_KEYS if k in row}


def assert_exact_widths(transfer, widths_file):
    """Every matched module of the slimmed target has the channels of the file's slimmed one, and
    every applied target group keeps exactly the file's channel indices."""
    info = read_widths(widths_file)
    sp, tp = transfer.plan.prefix
    spec = spec_from_json(info["index_spec"])
    matched = 0
    for name, row in info["layers"].items():
        if not name.startswith(sp):
            continue
        target = tp + name[len(sp):]
        try:
            mod = transfer.model.get_submodule(target)
        except AttributeError:
            continue  # outside the backbone (the classifier)
        want = {k: row[k] for k in SHAPE_KEYS if k in row}
        assert _shape(mod) == want, (name, target)
        matched += 1
    assert matched == transfer.plan.modules
    for g in transfer.plan.applied:
        assert transfer.plan.spec[g.target] == spec[g.source]
    return matched


def test_best_prefix_lines_up_renamed_trunks():
    src = {"conv1", "layer1.0.conv1", "layer1.0.bn1", "fc"}
    tgt = {"backbone.body.conv1", "backbone.body.layer1.0.conv1", "backbone.body.layer1.0.bn1",
           "backbone.fpn.inner_blocks.0.0"}
    assert best_prefix(src, tgt) == (("", "backbone.body."), 3)
    assert best_prefix({"a.b"}, {"c.d"}) == (("", ""), 0)


def test_mobilenet_widths_onto_lraspp_segmentation(exports):
    widths = exports("tv:mobilenet_v3_large")
    info = create("tv:lraspp_mobilenet_v3_large", img_size=64)
    t = cafeslim.transfer_widths(info, widths)
    assert t.plan.prefix == ("features.", "backbone.")
    assert assert_exact_widths(t, widths) > 100
    # only the classifier's hidden layer has no counterpart; it is reported, not dropped silently
    assert [(g.status, g.layers[0]) for g in t.plan.not_applied] == [("outside", "classifier.0")]
    assert len(t.plan.applied) == 29
    out = t.model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["out"] and out["out"].shape == (1, 21, 64, 64)
    for key in ("backbone", "whole"):
        before, after = t.flops[key]
        assert 0 < after < 0.8 * before


def _freeze_norms(module):
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d (as pretrained detectors have)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.running_mean.copy_(torch.randn(child.num_features) * 0.1)
            setattr(module, name, frozen)
        else:
            _freeze_norms(child)


def test_mobilenet_widths_onto_detector_with_frozen_bn(exports):
    widths = exports("tv:mobilenet_v3_large")
    info = create("tv:fasterrcnn_mobilenet_v3_large_320_fpn", img_size=128)
    _freeze_norms(info.model.backbone.body)
    stats = info.model.get_submodule("backbone.body.0.1").running_mean.clone()
    t = cafeslim.transfer_widths(info, widths)
    assert t.plan.prefix == ("features.", "backbone.body.") and t.plan.backbone == "backbone.body"
    assert_exact_widths(t, widths)
    first = t.model.get_submodule("backbone.body.0.1")
    assert type(first).__name__ == "FrozenBatchNorm2d"
    kept = spec_from_json(read_widths(widths)["index_spec"])[1]
    assert first.weight.shape == (len(kept),) and kept[0] > 0
    assert torch.equal(first.running_mean, stats[kept])  # the kept channels' statistics
    det = t.model(*info.model_inputs())
    assert isinstance(det, list) and set(det[0]) == {"boxes", "labels", "scores"}
    assert det[0]["boxes"].shape[1:] == (4,)
    before, after = t.flops["backbone"]
    assert after < before and t.flops["whole"] is None  # the heads' cost depends on proposals


def test_timm_features_target_reports_fixed_stage_outputs(exports):
    widths = exports("timm:test_resnet")
    info = create("timm:test_resnet", img_size=64, features_only=True)
    t = cafeslim.transfer_widths(info, widths)
    assert t.plan.prefix == ("", "")
    fixed = [g for g in t.plan.not_applied if g.status == "fixed"]
    # the feature maps are the model's outputs: their widths cannot follow the classifier's
    assert fixed and all("model output" in g.reason for g in fixed)
    assert t.plan.applied
    for g in t.plan.applied:
        assert len(t.plan.spec[g.target]) == g.kept < g.channels
    assert all(f.shape[0] == 1 for f in t.model(torch.randn(1, 3, 64, 64)))


def test_refuses_another_backbone(exports):
    info = create("tv:lraspp_mobilenet_v3_large", img_size=64)
    with pytest.raises(TransferError, match="backbones differ"):
        cafeslim.transfer_widths(info, exports("timm:test_resnet"))


def test_refuses_other_original_channels(exports, tmp_path):
    doc = json.loads(exports("tv:mobilenet_v3_large").read_text())
    doc["layers"]["features.2.block.0.0"]["full"]["out"] = 72  # as if another expansion ratio
    bad = tmp_path / "widths.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(TransferError, match=r"features\.2\.block\.0\.0 has channels"):
        cafeslim.transfer_widths(create("tv:lraspp_mobilenet_v3_large", img_size=64), bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cafeslim", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_transfer_json_and_bad_widths(exports, tmp_path):
    ok = _cli("export", "tv:lraspp_mobilenet_v3_large", "--img-size", "64", "--widths",
              str(exports("tv:mobilenet_v3_large")), "--format", "pt,onnx", "--out",
              str(tmp_path / "seg"), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["method"] == "transfer" and doc["transfer"]["applied"] == 29
    assert doc["flops"]["backbone"]["after"] < doc["flops"]["backbone"]["before"]
    assert {p.split("/")[-1] for p in doc["files"]} == {"widths.json", "model.pt", "model.onnx"}
    saved = json.loads((tmp_path / "seg" / "widths.json").read_text())
    assert saved["method"] == "transfer" and saved["transfer"]["prefix"]["target"] == "backbone."

    bad = _cli("export", "tv:lraspp_mobilenet_v3_large", "--img-size", "64", "--widths",
               str(exports("timm:test_resnet")), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "backbones differ" in lines[0]
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tv:fasterrcnn_resnet50_fpn", "tv:deeplabv3_resnet50"])
def test_resnet50_widths_onto_detection_and_segmentation(exports, target, tmp_path):
    from cafeslim.pipeline.transfer import transfer_export

    widths = exports("tv:resnet50")
    info = create(target, img_size=128)
    rep = transfer_export(info, widths, out_dir=tmp_path / "out")
    assert not rep.errors, rep.errors
    assert rep.plan.not_applied == [] and len(rep.plan.applied) > 30
    t = cafeslim.transfer_widths(info, widths)
    assert_exact_widths(t, widths)
    small = torch.load(tmp_path / "out" / "model.pt", weights_only=False).eval()
    with torch.no_grad():
        out = small(*info.model_inputs())
    if info.kind == "detection":
        assert set(out[0]) == {"boxes", "labels", "scores"}
        assert (tmp_path / "out" / "backbone" / "model.onnx").is_file()
    else:
        assert out["out"].shape == (1, 21, 128, 128)
        assert (tmp_path / "out" / "model.onnx").is_file()


def test_uniform_export_json_document(tmp_path):
    from cafeslim.cli.export import export_json

    rep = uniform_export(create("timm:test_resnet", img_size=32), fraction=0.5, formats=["pt"],
                         out_dir=tmp_path / "u")
    doc = json.loads(json.dumps(export_json("timm:test_resnet", "classification", rep)))
    assert doc["method"] == "uniform" and doc["flops"]["after"] < doc["flops"]["before"]
    assert doc["flops"]["counted"] == "model"
    assert doc["widths"] and all(isinstance(v, int) for v in doc["widths"].values())
    assert [p.split("/")[-1] for p in doc["files"]] == ["widths.json", "model.pt"]
