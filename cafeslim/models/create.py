"""Turn a model name into an eval-mode ``nn.Module`` and the input it expects.

Name rules (also in README.md):

* ``tv:NAME`` — a torchvision classification model (``torchvision.models.get_model``).
* ``timm:NAME`` — a timm model, optionally with a pretrained tag (``timm:resnet50.a1_in1k``).
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
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError, ModelNotFoundError, WeightsError
from . import hub
from .weights import load_weights

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"
DEFAULT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TV_NATIVE_SIZE = {"inception_v3": 299}  # architectures built for a non-224 input


@dataclass(frozen=True)
class ModelInfo:
    """A created model and what is needed to feed it.

    Attributes:
        model: the module, in eval mode.
        name: canonical name (``tv:resnet50``, ``timm:resnet50.a1_in1k``, ``pkg.mod:build``).
        input_size: (C, H, W) of one input image.
        data_config: timm ``resolve_data_config``-style preprocessing: ``input_size``,
            ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``.
    """

    model: nn.Module
    name: str
    input_size: Tuple[int, int, int]
    data_config: Dict[str, Any] = field(default_factory=dict)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic standard-normal batch of the model's input size.

        Example:
            >>> info = create("timm:test_resnet")
            >>> info.example_input(2).shape
            torch.Size([2, 3, 160, 160])
        """
        gen = torch.Generator().manual_seed(0)
        return torch.randn((batch, *self.input_size), generator=gen)


def create(name: str, *, pretrained: bool = False, weights: Union[str, Path, None] = None,
           num_classes: Optional[int] = None) -> ModelInfo:
    """Create a model by name (see the module docstring for the name rules).

    Args:
        name: ``tv:NAME``, ``timm:NAME[.tag]``, ``package.module:callable`` or a bare name.
        pretrained: load timm/torchvision hub weights (needs network unless cached).
        weights: a state-dict file to load after creation (``.safetensors``, ``.pt``, ...).
        num_classes: classifier size, passed to the timm/torchvision constructor (or to the
            user's callable as ``num_classes=``).

    Returns:
        A :class:`ModelInfo` with the model in eval mode.

    Raises:
        ModelNotFoundError: unknown name (with the closest names), missing module/attribute.
        WeightsError: download failed, or the weights file is unreadable or does not fit.
        ConfigError: contradicting options.

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
    kind, target = resolve_name(name)
    if kind == "tv":
        info = _create_tv(target, pretrained, num_classes)
    elif kind == "timm":
        info = _create_timm(target, pretrained, num_classes)
    else:
        if pretrained:
            raise ConfigError(f"pretrained hub weights exist only for timm and torchvision models; "
                              f"load weights for {name} from a file instead")
        info = _create_user(target, num_classes)
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
            raise ModelNotFoundError(f"unknown torchvision classification model {arch!r}"
                                     + _suggest(arch, sorted(_tv_names()), TV_PREFIX))
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
        return "tv", name
    timm_names = _timm_names()
    tv_only = sorted(_tv_names().difference(timm_names))
    raise ModelNotFoundError(f"unknown model {name!r} (neither timm nor torchvision)"
                             + _suggest(name, timm_names + tv_only, ""))


# --- torchvision -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tv_names() -> frozenset:
    import torchvision.models as tvm

    # module=torchvision.models keeps classification models only (no detection, video, ...).
    return frozenset(tvm.list_models(module=tvm))


def _create_tv(arch: str, pretrained: bool, num_classes: Optional[int]) -> ModelInfo:
    import torchvision.models as tvm

    kwargs: Dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
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
        with hub.download_errors(what), _quiet_init():
            model = tvm.get_model(arch, weights=default_weights, **kwargs)
    else:
        with _quiet_init():
            model = tvm.get_model(arch, **kwargs)
    size = _tv_input_size(arch, model, default_weights if pretrained else None)
    return ModelInfo(model=model, name=what, input_size=size,
                     data_config=_tv_data_config(size, default_weights))


@contextmanager
def _quiet_init() -> Iterator[None]:
    # inception_v3/googlenet warn on every construction that their default init will change;
    # on a CLI that is noise on stderr about a behaviour cafeslim does not depend on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The default weight initialization")
        yield


def _tv_input_size(arch: str, model: nn.Module, weights: Any) -> Tuple[int, int, int]:
    if weights is not None:
        try:
            crop = weights.transforms().crop_size[0]
            return (3, int(crop), int(crop))
        except (AttributeError, IndexError, TypeError):
            pass  # weights without ImageClassification transforms: use the architecture's size
    native = getattr(model, "image_size", None)  # torchvision ViTs fix their input size
    if isinstance(native, int):
        return (3, native, native)
    size = _TV_NATIVE_SIZE.get(arch, DEFAULT_SIZE)
    return (3, size, size)


def _tv_data_config(size: Tuple[int, int, int], weights: Any) -> Dict[str, Any]:
    config: Dict[str, Any] = {"input_size": size, "interpolation": "bilinear",
                              "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                              "crop_pct": 0.875, "crop_mode": "center"}
    try:
        tf = weights.transforms()
        config.update(mean=tuple(tf.mean), std=tuple(tf.std),
                      interpolation=tf.interpolation.value,
                      crop_pct=round(tf.crop_size[0] / tf.resize_size[0], 4))
    except (AttributeError, IndexError, TypeError, ZeroDivisionError):
        pass  # no weights metadata: ImageNet defaults
    return config


# --- timm --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _timm_names() -> List[str]:
    import timm

    return list(timm.list_models())


def _timm_is_model(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name)


def _create_timm(spec: str, pretrained: bool, num_classes: Optional[int]) -> ModelInfo:
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
                     data_config=config)


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
