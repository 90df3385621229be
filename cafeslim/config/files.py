"""Settings files: resolving a config dataclass from flags and YAML, and writing it back.

A run's settings are resolved once, in a fixed precedence — **flags > YAML > defaults** —
and written to ``runs/<name>/config.yaml`` so that a run can be repeated or resumed with
exactly the same values. Nothing here imports torch: the CLI's ``--help`` must stay fast.

Rules of :func:`resolve`:

* a flag whose value is ``None`` was not given on the command line and does not override;
* YAML keys may use ``-`` or ``_`` (``batch-size`` is ``batch_size``);
* an unknown key is a :class:`~cafeslim.errors.ConfigError` that names it and lists the valid
  ones (a typo must never be silently ignored);
* values are checked against the field's annotation (``int``, ``float``, ``bool``, ``str``,
  ``Optional[...]``, ``Literal[...]``); an int is accepted for a float field.

Example:
    >>> from cafeslim.config import TrainConfig
    >>> cfg = resolve(TrainConfig, {"batch_size": 32}, {"epochs": 3, "batch-size": 16})
    >>> cfg.batch_size, cfg.epochs
    (32, 3)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Literal, Mapping, Optional, Type, TypeVar, Union

import yaml

from ..errors import ConfigError, OutputExistsError

T = TypeVar("T")

# Settings that may change when a run is resumed without breaking exactness: where it runs
# and how often it reports, not what it computes.
RESUMABLE_CHANGES = frozenset({"workers", "log_every", "ckpt_every", "device"})


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML settings file into a dict (an empty file gives ``{}``).

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping at the top.

    Example:
        >>> load_yaml("runs/r18/config.yaml")["train"]["epochs"]   # doctest: +SKIP
        10
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, "
                          f"not a {type(data).__name__}")
    return data


def section(data: Mapping[str, Any], name: str) -> Dict[str, Any]:
    """The ``name:`` block of a loaded YAML file (``{}`` when absent).

    Raises:
        ConfigError: the block exists but is not a mapping.

    Example:
        >>> section({"train": {"epochs": 2}}, "train")
        {'epochs': 2}
    """
    block = data.get(name) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"config section {name!r} must be a mapping of settings")
    return dict(block)


def resolve(cls: Type[T], flags: Optional[Mapping[str, Any]] = None,
            yaml_values: Optional[Mapping[str, Any]] = None) -> T:
    """Build a config dataclass with the precedence flags > YAML > defaults.

    Args:
        cls: a dataclass such as :class:`TrainConfig`.
        flags: command-line values; ``None`` values mean "not given".
        yaml_values: the stage's block of a YAML file (see :func:`section`).

    Raises:
        ConfigError: an unknown key (naming the valid ones), a value of the wrong type, or a
            value the dataclass rejects.

    Example:
        >>> from cafeslim.config import TrainConfig
        >>> resolve(TrainConfig, {"lr": None, "seed": 3}, {"seed": 1, "amp": "bf16"}).seed
        3
    """
    valid = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)  # each base in its own module's namespace
    merged: Dict[str, Any] = {}
    for source, values in (("config file", yaml_values or {}), ("flag", flags or {})):
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in valid:
                raise ConfigError(f"unknown {_stage(cls)} setting {key!r} in {source}; valid: "
                                  f"{', '.join(sorted(valid))}")
            if value is None and source == "flag":
                continue
            merged[name] = _coerce(name, value, hints[name])
    try:
        return cls(**merged)
    except TypeError as exc:  # a dataclass without defaults for some field
        raise ConfigError(f"incomplete {_stage(cls)} settings: {exc}") from None


def _stage(cls: type) -> str:
    return cls.__name__.removesuffix("Config").lower() or cls.__name__


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field annotation; convert what is unambiguous."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for arg in inner:
            try:
                return _coerce(name, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"invalid value {value!r} for {name}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"invalid value {value!r} for {name}; choose from "
                          f"{', '.join(map(str, args))}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, not {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, not {value!r}")
    return value  # containers and other types: the dataclass validates them


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain-python dict of a config dataclass (tuples become lists, as in YAML).

    Example:
        >>> from cafeslim.config import TrainConfig
        >>> to_dict(TrainConfig())["momentum"]
        0.9
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(config).items()}
    if isinstance(config, Mapping):
        return {str(k): _plain(v) for k, v in config.items()}
    raise ConfigError(f"not a config: {type(config).__name__}")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def dump_yaml(configs: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Write ``{stage: config}`` as one YAML file, atomically (temp file + rename).

    Values may be config dataclasses, mappings or plain values.

    Example:
        >>> dump_yaml({"model": "timm:resnet18", "train": TrainConfig()},
        ...           "runs/r18/config.yaml")                    # doctest: +SKIP
        PosixPath('runs/r18/config.yaml')
    """
    data = {str(k): (to_dict(v) if dataclasses.is_dataclass(v) or isinstance(v, Mapping)
                     else _plain(v)) for k, v in configs.items()}
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file so that readers see the old or the new content, never a torn one.

    ``write(fh)`` fills a temporary file in the same folder; it is flushed, fsynced and renamed
    over ``path`` (atomic on POSIX and Windows), then the folder is fsynced so the rename
    survives a power cut. On any error the temporary file is removed and ``path`` untouched.

    Example:
        >>> atomic_write("runs/r/notes.txt", lambda fh: fh.write(b"hello"))  # doctest: +SKIP
        PosixPath('runs/r/notes.txt')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would differ from a plain open()
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on this platform (Windows): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_empty_dir(path: Union[str, Path], force: bool, *, what: str = "output folder",
                     hint: str = "pass --force to write into it anyway") -> Path:
    """Check that ``path`` can receive new files; nothing is created or deleted.

    With ``force`` an existing folder is written into and same-named files are overwritten;
    other files in it are left alone (deleting a folder the user mistyped is worse than
    leaving stale files).

    Args:
        path: the folder.
        force: accept a non-empty folder.
        what, hint: how the error names the folder and what it suggests.

    Raises:
        OutputExistsError: ``path`` is a file, or a non-empty folder and ``force`` is False.

    Example:
        >>> ensure_empty_dir("exports/r18", force=False)
        PosixPath('exports/r18')
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{what.split()[0]} path {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(f"{what} {path} exists and is not empty; {hint}")
    return path


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any],
                     allowed: frozenset = RESUMABLE_CHANGES) -> Dict[str, tuple]:
    """Settings that differ between two config dicts, except the ``allowed`` ones.

    Example:
        >>> changed_settings({"seed": 0, "workers": 2}, {"seed": 1, "workers": 8})
        {'seed': (0, 1)}
    """
    keys = (set(old) | set(new)) - set(allowed)
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}
