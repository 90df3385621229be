"""Turn a model name into an eval-mode ``nn.Module`` and the input it expects.

Name rules (also in README.md):

* ``tv:NAME`` — any torchvision model (``torchvision.models.get_model``): classification,
  detection, segmentation, video or optical flow (:mod:`cafeslim.models.tv`; quantized
  models are refused).
* ``timm:NAME`` — a timm model, optionally with a pretrained tag (``timm:resnet50.a1_in1k``);
  ``features_only=True`` builds its feature-pyramid form (a list of feature maps).
* ``package.module:attr`` — the user's own model: ``attr`` (dots allowed, ``Class.build``) is
  called with no arguments and must return an ``nn.Module``, or is an ``nn.Module`` instance.
  The current folder is importable, as with ``python -m``.
* a bare ``NAME`` — timm if ``timm.is_model(NAME)``, else torchvision if it is a torchvision
  classification model, else an error that suggests the closest names. timm wins because it
  covers most architectures and carries its own input configuration; write ``tv:resnet50`` for
  torchvision's.

Input size (C, H, W), used for tracing and for every example input:

* timm: the model's ``pretrained_cfg`` (``timm.data.resolve_model_data_config``);
* torchvision: 224, except inception_v3 (299) and models that fix their size themselves (a
  ViT's ``image_size``); with ``pretrained=True``, the crop size of the weights' transforms;
  the other kinds as :mod:`cafeslim.models.tv` says (detection 320, video 16-frame clips);
* user models: a ``default_input_size`` attribute (int or (H, W) or (C, H, W)), else a timm-style
  ``pretrained_cfg``, else 224 x 224 with as many channels as the first conv expects.

``pretrained=True`` downloads hub weights. Without network the download fails within seconds
(reachability is probed first, cached weights are still used) with a :class:`WeightsError`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError, ModelNotFoundError, WeightsError
from . import hub
from .info import ModelInfo
from .tv import DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD, create_tv, refuse_quantized, tv_kinds
from .weights import load_weights

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"


def create(name: str, *, pretrained: bool = False, weights: Union[str, Path, None] = None,
           num_classes: Optional[int] = None, img_size: Optional[int] = None,
           features_only: bool = False) -> ModelInfo:
    """Create a model by name (see the module docstring for the name rules).

    Args:
        name: ``tv:NAME``, ``timm:NAME[.tag]``, ``package.module:callable`` or a bare name.
        pretrained: load timm/torchvision hub weights (needs network unless cached).
        weights: a state-dict file to load after creation (``.safetensors``, ``.pt``, ...).
        num_classes: classifier size, passed to the timm/torchvision constructor (or to the
            user's callable as ``num_classes=``).
        img_size: square input side instead of the model's default (a detection model's
            transform is set to keep it).
        features_only: a timm model's ``features_only=True`` form (timm models only).

    Returns:
        A :class:`ModelInfo` with the model in eval mode.

    Raises:
        ModelNotFoundError: unknown name (with the closest names), missing module/attribute.
        WeightsError: download failed, or the weights file is unreadable or does not fit.
        ConfigError: contradicting options; a quantized torchvision model.

    Example:
        >>> info = create("tv:resnet18", num_classes=10)
        >>> info.name, info.input_size
        ('tv:resnet18', (3, 224, 224))
    """
    name = name.strip()
    if not name:
        raise ModelNotFoundError("empty model name")
    if pretrained and weights is not None:
        raise ConfigError("pass either pretrained weights or a weights file, not both")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    if weights is not None and not Path(weights).exists():
        # Checked again when loading; here so that a typo fails before a slow model build.
        raise WeightsError(f"weights file {weights} does not exist")
    if img_size is not None and img_size < 1:
        raise ConfigError(f"img_size must be positive, got {img_size}")
    kind, target = resolve_name(name)
    if features_only and kind != "timm":
        raise ConfigError(f"--features-only builds timm's feature-pyramid form; {name} is not a "
                          "timm model")
    if kind == "tv":
        info = create_tv(target, pretrained, num_classes, img_size)
    elif kind == "timm":
        info = _create_timm(target, pretrained, num_classes, features_only)
    else:
        if pretrained:
            raise ConfigError(f"pretrained hub weights exist only for timm and torchvision models; "
                              f"load weights for {name} from a file instead")
        info = _create_user(target, num_classes)
    if img_size is not None and kind != "tv":
        shape = (info.input_size[0], int(img_size), int(img_size))
        info = replace(info, input_size=shape, data_config={**info.data_config, "input_size": shape})
    if weights is not None:
        load_weights(info.model, weights)
    info.model.eval()
    return info


def resolve_name(name: str) -> Tuple[str, str]:
    """Decide which source a name refers to, without building anything.

    Returns:
        ``(kind, target)`` with kind ``tv``, ``timm`` or ``user``.

    Raises:
        ModelNotFoundError: unknown tv/timm/bare name, with up to 3 close names.

    Example:
        >>> resolve_name("resnet50"), resolve_name("tv:resnet50")
        (('timm', 'resnet50'), ('tv', 'resnet50'))
    """
    if name.startswith(TV_PREFIX):
        arch = name[len(TV_PREFIX):]
        if arch not in _tv_names():
            raise ModelNotFoundError(f"unknown torchvision model {arch!r}"
                                     + _suggest(arch, sorted(_tv_names()), TV_PREFIX))
        refuse_quantized(arch)
        return "tv", arch
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if not _timm_is_model(arch):
            raise ModelNotFoundError(f"unknown timm model {arch!r}"
                                     + _suggest(arch, _timm_names(), TIMM_PREFIX))
        return "timm", arch
    if ":" in name:
        return "user", name
    if _timm_is_model(name):
        return "timm", name
    if name in _tv_names():
        refuse_quantized(name)
        return "tv", name
    timm_names = _timm_names()
    tv_only = sorted(_tv_names().difference(timm_names))
    raise ModelNotFoundError(f"unknown model {name!r} (neither timm nor torchvision)"
                             + _suggest(name, timm_names + tv_only, ""))


# --- torchvision (every kind: models/tv.py) ------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tv_names() -> frozenset:
    return frozenset(tv_kinds())


# --- timm --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _timm_names() -> List[str]:
    import timm

    return list(timm.list_models())


def _timm_is_model(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name)


def _create_timm(spec: str, pretrained: bool, num_classes: Optional[int],
                 features_only: bool = False) -> ModelInfo:
    import timm
    from timm.data import resolve_model_data_config
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(spec)
    if tag:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise ModelNotFoundError(
                f"timm model {arch!r} has no pretrained tag {tag!r}"
                + (f"; it has: {', '.join(tags[:8])}{' …' if len(tags) > 8 else ''}" if tags
                   else "; it has no pretrained weights"))
    kwargs: Dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if features_only:
        if num_classes is not None:
            raise ConfigError("a features_only model has no classifier; drop --num-classes")
        kwargs["features_only"] = True
    what = f"timm:{spec}"
    if pretrained:
        cfg = get_pretrained_cfg(spec)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise WeightsError(f"timm has no pretrained weights for {what}")
        tag = tag or cfg.tag
        if cfg.hf_hub_id:
            why = hub.probe(hub.hf_endpoint())
            # Unreachable hub: still try the local cache, with the hub client in offline mode
            # so that it fails at once instead of retrying for a minute.
            with hub.hf_offline(why is not None), hub.download_errors(what, why):
                model = timm.create_model(spec, pretrained=True, **kwargs)
        else:
            if cfg.url and not cfg.file:
                cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
                if not cache.is_file():
                    hub.require_reachable(what, cfg.url)
            with hub.download_errors(what):
                model = timm.create_model(spec, pretrained=True, **kwargs)
    else:
        model = timm.create_model(spec, **kwargs)
    config = dict(resolve_model_data_config(model))
    config["input_size"] = tuple(int(x) for x in config["input_size"])
    canonical = f"timm:{arch}.{tag}" if tag else f"timm:{arch}"
    return ModelInfo(model=model, name=canonical, input_size=config["input_size"],
                     data_config=config, kind="features" if features_only else "classification")


# --- user models -------------------------------------------------------------------------------

def _create_user(spec: str, num_classes: Optional[int]) -> ModelInfo:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelNotFoundError(f"{spec!r} is not of the form package.module:callable")
    # Console scripts do not put the working folder on sys.path; users expect `mymodel:build`
    # to find ./mymodel.py as `python -m` would. Appended, so it never shadows installed packages.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ModelNotFoundError(
                f"no module named {missing!r} (from {spec!r}); it must be importable from the "
                "current folder or PYTHONPATH") from None
        raise  # a dependency of the user's module is missing: their traceback is more useful
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = module_name if i == 0 else f"{module_name}:{'.'.join(parts[:i])}"
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise ModelNotFoundError(f"{owner!r} has no attribute {part!r} (from {spec!r})"
                                     + _suggest(part, public, ""))
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if num_classes is not None:
            raise ConfigError(f"{spec} is a module instance; num_classes cannot be applied to it")
        model = obj
    elif callable(obj):
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        if kwargs and not _accepts(obj, "num_classes"):
            raise ConfigError(f"{spec} does not accept a num_classes argument")
        model = obj(**kwargs)
        if not isinstance(model, nn.Module):
            raise ModelNotFoundError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    else:
        raise ModelNotFoundError(f"{spec} is a {type(obj).__name__}, neither a torch.nn.Module "
                                 "nor a callable returning one")
    size = _user_input_size(model)
    config = {"input_size": size, "interpolation": "bilinear", "mean": IMAGENET_MEAN,
              "std": IMAGENET_STD, "crop_pct": 0.875, "crop_mode": "center"}
    if isinstance(getattr(model, "pretrained_cfg", None), dict) and \
            getattr(model, "default_input_size", None) is None:
        from timm.data import resolve_model_data_config

        config.update(resolve_model_data_config(model))
        config["input_size"] = size
    return ModelInfo(model=model, name=spec, input_size=size, data_config=config)


def _user_input_size(model: nn.Module) -> Tuple[int, int, int]:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    channels = int(first_conv.in_channels) if first_conv is not None else 3
    declared = getattr(model, "default_input_size", None)
    if declared is not None:
        dims = (declared,) if isinstance(declared, int) else tuple(declared)
        if len(dims) == 1:
            return (channels, int(dims[0]), int(dims[0]))
        if len(dims) == 2:
            return (channels, int(dims[0]), int(dims[1]))
        if len(dims) == 3:
            return tuple(int(d) for d in dims)  # type: ignore[return-value]
        raise ConfigError(f"default_input_size must be an int, (H, W) or (C, H, W), got {declared!r}")
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and len(cfg.get("input_size", ())) == 3:
        return tuple(int(d) for d in cfg["input_size"])  # type: ignore[return-value]
    return (channels, DEFAULT_SIZE, DEFAULT_SIZE)


def _accepts(fn: Any, arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # builtins without a signature: let the call decide
    return any(p.name == arg or p.kind is p.VAR_KEYWORD for p in params)


# --- suggestions and downloads -----------------------------------------------------------------

def _suggest(word: str, candidates: List[str], prefix: str) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
