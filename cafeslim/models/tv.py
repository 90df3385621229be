"""torchvision models of every kind: classification, detection, segmentation, video, flow.

``tv:NAME`` resolves every builder of ``torchvision.models.list_models()``. Quantized models
are refused: their int8 modules hold packed weights that no channel can be sliced out of.

Default example inputs (``img_size`` overrides the spatial size H = W):

* classification: 224 (inception_v3 299, a ViT its ``image_size``); pretrained: the weights'
  crop size;
* detection: one 3×320×320 image (the size of the ``_320_`` models; 300 for ``ssd300_vgg16``),
  and the model's transform is set to keep that size instead of resizing to 800 px;
* segmentation: 224 (fully convolutional; pretrained: the weights' 520);
* video: a 3×16×H×W clip, H the weights' crop size (112 for the ResNet-3D family, 224 else);
* optical flow: a pair of 3×128×128 images (RAFT's minimum size).

Detection and flow models do not trace as a whole (image-list transform, anchors, NMS; RAFT's
recurrent update): their ``backbone`` / ``feature_encoder`` is the traced part.
"""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from . import hub
from .info import ModelInfo

DEFAULT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TV_NATIVE_SIZE = {"inception_v3": 299}  # architectures built for a non-224 input
DETECTION_SIZE = 320
_DETECTION_NATIVE = {"ssd300_vgg16": 300}
VIDEO_FRAMES = 16  # the clip length of torchvision's video recipes (mvit needs exactly 16)
FLOW_SIZE = 128
DETECTION_REASON = ("detection head contract: the heads read these channels; the image "
                    "transform, anchors and NMS are not traced")
FLOW_REASON = ("flow contract: the correlation volume and the recurrent update read these "
               "channels and are not traced")
_PARTS = {"detection": ("backbone", DETECTION_REASON), "flow": ("feature_encoder", FLOW_REASON)}


@functools.lru_cache(maxsize=1)
def tv_kinds() -> Dict[str, str]:
    """Every torchvision builder name -> its kind (``quantized`` for the int8 models).

    Example:
        >>> tv_kinds()["r3d_18"], tv_kinds()["quantized_resnet18"]
        ('video', 'quantized')
    """
    import torchvision.models as tvm

    kinds = {}
    for kind, module in (("classification", tvm), ("detection", tvm.detection),
                         ("segmentation", tvm.segmentation), ("video", tvm.video),
                         ("flow", tvm.optical_flow), ("quantized", tvm.quantization)):
        kinds.update({n: kind for n in tvm.list_models(module=module)})
    for n in tvm.list_models():  # builders of a module added after this list was written
        kinds.setdefault(n, "classification")
    return kinds


def refuse_quantized(arch: str) -> None:
    """Raise :class:`ConfigError` for a quantized model (one line: why, and what to do)."""
    if tv_kinds().get(arch) == "quantized":
        plain = arch[len("quantized_"):]
        raise ConfigError(f"tv:{arch} is a quantized (int8) model, whose packed weights cannot be "
                          f"slimmed; slim tv:{plain} and quantize the result")


def create_tv(arch: str, pretrained: bool, num_classes: Optional[int],
              img_size: Optional[int] = None) -> ModelInfo:
    """Build ``tv:arch`` in eval mode with its kind's default example input (module docstring).

    Example:
        >>> create_tv("r3d_18", False, None, img_size=64).input_size
        (3, 16, 64, 64)
    """
    import torchvision.models as tvm

    refuse_quantized(arch)
    kind = tv_kinds()[arch]
    kwargs: Dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if kind in ("detection", "segmentation") and not pretrained:
        kwargs["weights_backbone"] = None  # their builders download ImageNet weights by default
    try:
        default_weights = tvm.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        default_weights = None
    what = f"tv:{arch}"
    if pretrained:
        if default_weights is None:
            raise WeightsError(f"torchvision has no pretrained weights for {what}")
        classes = len(default_weights.meta.get("categories") or ())
        if num_classes is not None and classes and num_classes != classes:
            raise ConfigError(f"torchvision's pretrained weights for {what} have {classes} classes, "
                              f"not {num_classes}; fine-tune elsewhere and pass the weights file")
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(default_weights.url).path).name
        if not cache.is_file():
            hub.require_reachable(what, default_weights.url)
        with hub.download_errors(what), quiet_init():
            model = tvm.get_model(arch, weights=default_weights, **kwargs)
    else:
        with quiet_init():
            model = tvm.get_model(arch, **kwargs)
    weights = default_weights if pretrained else None
    size = _input_size(arch, kind, model, weights, img_size)
    if kind == "detection":
        _keep_size(model, size[1:])
    part, reason = _PARTS.get(kind, ("", ""))
    return ModelInfo(model=model.eval(), name=what, input_size=size,
                     data_config=_data_config(kind, size, default_weights), kind=kind,
                     part=part, part_reason=reason)


@contextmanager
def quiet_init() -> Iterator[None]:
    # inception_v3/googlenet warn on every construction that their default init will change;
    # on a CLI that is noise on stderr about a behaviour cafeslim does not depend on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The default weight initialization")
        yield


def _crop(weights: Any) -> Optional[int]:
    try:
        return int(weights.transforms().crop_size[0])
    except (AttributeError, IndexError, TypeError):
        return None


def _input_size(arch: str, kind: str, model: nn.Module, weights: Any,
                img_size: Optional[int]) -> Tuple[int, ...]:
    if kind == "detection":
        side = img_size or _DETECTION_NATIVE.get(arch, DETECTION_SIZE)
        return (3, side, side)
    if kind == "flow":
        side = img_size or FLOW_SIZE
        return (3, side, side)
    if kind == "video":
        meta = tvm_weights_default(arch)
        side = img_size or _crop(meta) or 112
        return (3, VIDEO_FRAMES, side, side)
    if kind == "segmentation":
        side = img_size or (_resize(weights) if weights is not None else None) or DEFAULT_SIZE
        return (3, side, side)
    if img_size:
        return (3, img_size, img_size)
    crop = _crop(weights) if weights is not None else None
    if crop:
        return (3, crop, crop)
    native = getattr(model, "image_size", None)  # torchvision ViTs fix their input size
    if isinstance(native, int):
        return (3, native, native)
    side = _TV_NATIVE_SIZE.get(arch, DEFAULT_SIZE)
    return (3, side, side)


def tvm_weights_default(arch: str) -> Any:
    """The builder's default weights enum entry (metadata only; nothing is downloaded)."""
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        return None


def _resize(weights: Any) -> Optional[int]:
    try:
        return int(weights.transforms().resize_size[0])
    except (AttributeError, IndexError, TypeError):
        return None


def _keep_size(model: nn.Module, hw: Tuple[int, ...]) -> None:
    """Make a detection model's transform keep an H×W image at its size (no resize to 800)."""
    t = getattr(model, "transform", None)
    if t is None:
        return
    if getattr(t, "fixed_size", None) is not None:  # SSD resizes to a fixed size
        t.fixed_size = (int(hw[0]), int(hw[1]))
    else:
        t.min_size, t.max_size = (int(min(hw)),), int(max(hw))


def _data_config(kind: str, size: Tuple[int, ...], weights: Any) -> Dict[str, Any]:
    config: Dict[str, Any] = {"input_size": size, "interpolation": "bilinear",
                              "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                              "crop_pct": 0.875, "crop_mode": "center"}
    if kind in ("detection", "flow"):  # these models normalise inside (or expect [-1, 1])
        config.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
        return config
    try:
        tf = weights.transforms()
        config.update(mean=tuple(tf.mean), std=tuple(tf.std), interpolation=tf.interpolation.value)
        config.update(crop_pct=round(tf.crop_size[0] / tf.resize_size[0], 4))
    except (AttributeError, IndexError, TypeError, ZeroDivisionError):
        pass  # no weights metadata (or no crop, segmentation): ImageNet defaults
    return config


__all__ = ["DETECTION_REASON", "FLOW_REASON", "create_tv", "quiet_init", "refuse_quantized",
           "tv_kinds"]
