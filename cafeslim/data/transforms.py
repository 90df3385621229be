"""Per-model preprocessing, exactly as timm defines it for the model.

The model's ``data_config`` (input size, mean/std, interpolation, crop percentage and mode,
from :func:`cafeslim.models.create`) goes through :func:`timm.data.resolve_data_config` and
:func:`timm.data.create_transform`: a RandomResizedCrop + flip + colour-jitter pipeline for
training, resize + centre crop for evaluation, both normalised with the model's mean/std. Using
timm's own functions (rather than re-implementing them) keeps pretrained models fed the way
they were trained.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from ..models import ModelInfo


def data_config(info: ModelInfo, img_size: Optional[int] = None) -> Dict[str, Any]:
    """The resolved timm data config of a model, optionally at another square input size.

    Args:
        info: the created model (its ``data_config`` and ``input_size``).
        img_size: overrides height and width (``TrainConfig.img_size``).

    Returns:
        ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``.

    Example:
        >>> data_config(create("timm:test_resnet"), img_size=64)["input_size"]   # doctest: +SKIP
        (3, 64, 64)
    """
    from timm.data import resolve_data_config

    args: Dict[str, Any] = dict(info.data_config)
    size = tuple(args.get("input_size") or info.input_size)
    if img_size is not None:
        size = (size[0], int(img_size), int(img_size))
    args["input_size"] = size  # timm lets input_size win over img_size: set it directly
    cfg = resolve_data_config(args=args)
    cfg["input_size"] = tuple(cfg["input_size"])
    return cfg


def timm_train_kwargs(aug: Any) -> Dict[str, Any]:
    """timm ``create_transform`` arguments of an :class:`~cafeslim.config.AugConfig` (None: {}).

    Unset settings are left out, so timm's own defaults apply (scale 0.08-1, flip 0.5).

    Example:
        >>> from cafeslim.config import AugConfig
        >>> timm_train_kwargs(AugConfig(scale=(0.5, 1), reprob=0.25))
        {'scale': (0.5, 1.0), 're_prob': 0.25}
    """
    if aug is None:
        return {}
    out = {"scale": aug.scale, "ratio": aug.ratio, "hflip": aug.hflip, "auto_augment": aug.aa,
           "re_prob": aug.reprob or None}
    return {k: v for k, v in out.items() if v is not None}


def build_transforms(info: ModelInfo, img_size: Optional[int] = None,
                     aug: Any = None) -> Tuple[Callable, Callable]:
    """timm's training and evaluation transforms (PIL image -> normalised tensor).

    ``aug`` (an :class:`~cafeslim.config.AugConfig`) sets timm's training augmentation
    (``scale``, ``ratio``, ``hflip``, ``aa``, ``reprob``); None keeps timm's defaults.

    Example:
        >>> train_tf, eval_tf = build_transforms(create("timm:resnet18"))   # doctest: +SKIP
        >>> eval_tf(pil_image).shape                                        # doctest: +SKIP
        torch.Size([3, 224, 224])
    """
    from timm.data import create_transform

    cfg = data_config(info, img_size)
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    kwargs = {k: cfg[k] for k in keys if k in cfg}
    return (create_transform(**kwargs, **timm_train_kwargs(aug), is_training=True),
            create_transform(**kwargs, is_training=False))
