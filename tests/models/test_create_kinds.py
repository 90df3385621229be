"""Every torchvision model kind: names, kinds, default example inputs, traced parts."""

import pytest
import torch

from cafeslim.errors import ConfigError
from cafeslim.models import create
from cafeslim.models.tv import DETECTION_REASON, tv_kinds


def test_every_builder_has_a_kind():
    import torchvision.models as tvm

    kinds = tv_kinds()
    assert set(kinds) == set(tvm.list_models())
    assert {kinds[n] for n in ("resnet18", "fcos_resnet50_fpn", "fcn_resnet50", "s3d", "raft_large",
                               "quantized_mobilenet_v2")} == \
        {"classification", "detection", "segmentation", "video", "flow", "quantized"}


@pytest.mark.parametrize("name", ["tv:quantized_resnet18", "quantized_mobilenet_v2"])
def test_quantized_models_are_refused(name):
    with pytest.raises(ConfigError, match="quantized"):
        create(name)


def test_detection_input_is_a_list_of_images_and_the_backbone_is_traced():
    info = create("tv:ssdlite320_mobilenet_v3_large")
    assert (info.kind, info.part, info.part_reason) == ("detection", "backbone", DETECTION_REASON)
    (images,) = info.model_inputs(2)
    assert len(images) == 2 and images[0].shape == (3, 320, 320)
    assert 0 <= float(images[0].min()) and float(images[0].max()) <= 1
    x = info.example_input()
    # the backbone input is what the model's own transform makes of the images: normalised
    assert x.shape == (1, 3, 320, 320) and float(x.min()) < 0
    assert torch.equal(x, info.example_input())
    out = info.model(*info.model_inputs())
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_detection_img_size_sets_the_transform():
    info = create("tv:fasterrcnn_mobilenet_v3_large_320_fpn", img_size=256)
    assert info.input_size == (3, 256, 256)
    assert info.example_input().shape == (1, 3, 256, 256)  # not resized to 320 or 800
    assert create("tv:ssd300_vgg16").input_size == (3, 300, 300)


def test_video_segmentation_and_flow_inputs():
    video = create("tv:r3d_18", img_size=32)
    assert (video.kind, video.input_size) == ("video", (3, 16, 32, 32))
    assert video.model(video.example_input()).shape == (1, 400)
    assert create("tv:mvit_v2_s").input_size == (3, 16, 224, 224)  # the weights' crop
    seg = create("tv:lraspp_mobilenet_v3_large", img_size=64)
    assert seg.kind == "segmentation" and seg.part == ""
    assert seg.model(seg.example_input())["out"].shape == (1, 21, 64, 64)
    flow = create("tv:raft_small")
    a, b = flow.model_inputs()
    assert a.shape == b.shape == (1, 3, 128, 128) and not torch.equal(a, b)
    assert flow.part == "feature_encoder" and flow.example_input().shape == (2, 3, 128, 128)


def test_timm_features_only():
    info = create("timm:test_resnet", features_only=True)
    assert info.kind == "features"
    feats = info.model(info.example_input())
    assert isinstance(feats, list) and len(feats) > 1
    with pytest.raises(ConfigError, match="not a timm model"):
        create("tv:resnet18", features_only=True)
    with pytest.raises(ConfigError, match="no classifier"):
        create("timm:test_resnet", features_only=True, num_classes=3)


def test_img_size_for_classifiers():
    assert create("timm:test_resnet", img_size=64).input_size == (3, 64, 64)
    assert create("tv:resnet18", img_size=64).example_input().shape == (1, 3, 64, 64)
