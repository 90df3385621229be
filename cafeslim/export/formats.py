"""Write a slimmed model to disk and prove each file computes what the model computes.

Formats: ``model.pt`` (the whole module, for Python users with cafeslim's model classes
importable), ``model.pt2`` (``torch.export``; loads with plain torch), ``model.onnx``
(checked in onnxruntime) and ``widths.json`` (the architecture: per-layer channels, FLOPs,
params, the IndexSpec). :func:`export_model` writes any subset and records, per format, the
parity with eager PyTorch or the error that stopped it; one failing exporter does not stop
the others, because users hit exporter gaps on models that are otherwise fine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import ConfigError, ExportError
from .widths import write_widths_json

PathLike = Union[str, os.PathLike]
FORMATS = ("pt", "pt2", "onnx")
DEFAULT_RTOL = 1e-4


def _leaves(out: Any) -> List[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def output_scale(out: Any) -> float:
    """Largest absolute entry of a model output (tensor or nested tuple/dict of tensors)."""
    leaves = _leaves(out)
    return max((float(t.detach().abs().max()) for t in leaves if t.numel()), default=0.0)


def max_abs_diff(ref: Any, other: Sequence[Any]) -> float:
    """Max absolute difference between the leaves of ``ref`` and a flat list of arrays."""
    leaves = _leaves(ref)
    other = list(other)
    if len(leaves) != len(other):
        raise ExportError(f"the export returns {len(other)} outputs, the model {len(leaves)}")
    diff = 0.0
    for a, b in zip(leaves, other):
        b = torch.as_tensor(b)
        if tuple(a.shape) != tuple(b.shape):
            raise ExportError(f"output shape {tuple(b.shape)} differs from the model's {tuple(a.shape)}")
        if a.numel():
            diff = max(diff, float((a.detach().double() - b.double()).abs().max()))
    return diff


def _check(diff: float, scale: float, what: str, rtol: Optional[float], atol: Optional[float]) -> None:
    if rtol is None and atol is None:
        return
    limit = (atol or 0.0) + (rtol or 0.0) * scale
    if not diff <= limit:  # also catches NaN
        raise ExportError(f"{what} differs from PyTorch by {diff:.3g} (output scale {scale:.3g}, limit {limit:.3g})")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout, by Python or by C++ code, to stderr for a while.

    The TorchScript ONNX exporter's fallback paths print whole graphs with ``printf`` on
    file descriptor 1, which ``contextlib.redirect_stdout`` cannot catch; ``--json`` output
    must stay one document on stdout, so file descriptor 1 itself is pointed at stderr.

    Example:
        >>> with stdout_to_stderr():
        ...     torch.onnx.export(model, (x,), "m.onnx")
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded interpreters): nothing to protect
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[nn.Module]:
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


# --------------------------------------------------------------------------- model files

def save_pt(model: nn.Module, path: PathLike) -> Path:
    """Pickle the whole module (``torch.load(path, weights_only=False)`` restores it).

    Example:
        >>> save_pt(small, "out/model.pt")
    """
    path = Path(path)
    torch.save(model, path)
    return path


def save_pt2(model: nn.Module, example_input: torch.Tensor, path: PathLike, *,
             rtol: Optional[float] = None, atol: Optional[float] = None,
             check_inputs: Sequence[Any] = ()) -> float:
    """``torch.export`` the model (dynamic batch where possible), save, reload and compare.

    Args:
        model: the model, exported in eval mode.
        example_input: one input batch.
        path: the ``.pt2`` file to write.
        rtol: tolerance relative to the output scale (see :func:`output_scale`).
        atol: absolute tolerance; with neither, nothing is checked.
        check_inputs: more inputs of the example's shape to compare on (a program that baked
            in the example's output would match there and nowhere else).

    Returns:
        Max abs difference between the reloaded program and eager PyTorch, over
        ``example_input`` and ``check_inputs``.

    Raises:
        ExportError: export failed, or the reloaded program is outside tolerance.

    Example:
        >>> diff = save_pt2(small, torch.randn(1, 3, 224, 224), "out/model.pt2")
    """
    path = Path(path)
    args = _args(example_input)
    x = args[0]
    with _eval(model), torch.no_grad(), stdout_to_stderr():
        try:
            try:
                if len(args) != 1 or not isinstance(x, torch.Tensor):
                    raise TypeError("structured inputs: no dynamic batch")
                # A batch of one would be specialised to 1; two keeps the batch axis symbolic.
                xe = torch.cat([x, x]) if x.shape[0] == 1 else x
                ep = torch.export.export(model, (xe,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
            except Exception:
                ep = torch.export.export(model, args)
            torch.export.save(ep, str(path))
            loaded = torch.export.load(str(path)).module()
            runs = [(a, _leaves(loaded(*a))) for a in [args, *map(_args, check_inputs)]]
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"torch.export failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        return _compare_runs(model, runs, "model.pt2", rtol, atol)


def _compare_runs(model: nn.Module, runs: Sequence[Tuple[tuple, Sequence[Any]]], what: str,
                  rtol: Optional[float], atol: Optional[float]) -> float:
    """Max abs difference of exported outputs from eager ``model`` over ``(args, outputs)`` runs."""
    worst = 0.0
    for args, got in runs:
        ref = model(*args)
        diff = max_abs_diff(ref, got)
        _check(diff, output_scale(ref), what, rtol, atol)
        worst = max(worst, diff)
    return worst


def _args(example_input: Any) -> tuple:
    """Positional arguments: a tensor is one batch; a tuple is the arguments themselves (a
    detection model's ``([image, ...],)``, a flow model's image pair)."""
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


def save_onnx(model: nn.Module, example_input: torch.Tensor, path: PathLike, *,
              rtol: Optional[float] = None, atol: Optional[float] = None, opset: int = 17,
              check_inputs: Sequence[Any] = ()) -> float:
    """Export to ONNX (dynamic batch axis), run it in onnxruntime and compare with PyTorch.

    The TorchScript exporter goes first: it is about ten times faster and handles timm's
    models; the dynamo exporter is the fallback.

    Args:
        model: the model, exported in eval mode.
        example_input: one input batch.
        path: the ``.onnx`` file to write (weights inside the file).
        rtol: tolerance relative to the output scale; atol: absolute tolerance; with
            neither, nothing is checked.
        opset: ONNX opset of the TorchScript exporter.
        check_inputs: more inputs of the example's shape to compare on.

    Returns:
        Max abs difference between onnxruntime (CPUExecutionProvider) and eager PyTorch,
        over ``example_input`` and ``check_inputs``.

    Raises:
        ExportError: both exporters failed, onnxruntime cannot run the file, or the outputs
            are outside tolerance.

    Example:
        >>> diff = save_onnx(small, torch.randn(1, 3, 224, 224), "out/model.onnx", rtol=1e-4)
    """
    import onnxruntime as ort

    path = Path(path)
    args = _args(example_input)
    x = args[0]
    with _eval(model), torch.no_grad():
        ref = model(*args)
        n_out = len(_leaves(ref))
        names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
        axes = {n: {0: "batch"} for n in ["input", *names]}
        flat_in = _leaves(args)
        if len(flat_in) != 1 or not isinstance(x, torch.Tensor):  # a list of images, a pair
            axes = {}
        errors = []
        for dynamo in (False, True):
            try:
                with warnings.catch_warnings(), stdout_to_stderr():
                    warnings.simplefilter("ignore")
                    if dynamo:
                        torch.onnx.export(model, args, str(path), dynamo=True,
                                          output_names=names, external_data=False,
                                          dynamic_shapes=({0: torch.export.Dim.AUTO},) if axes else None)
                    else:
                        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                                          input_names=["input"] if axes else None,
                                          output_names=names, dynamic_axes=axes or None)
                break
            except Exception as exc:
                errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: "
                              f"{type(exc).__name__}: {_first_line(exc)}")
        else:
            raise ExportError("ONNX export failed; " + "; ".join(errors))
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs = []
        for a in [args, *map(_args, check_inputs)]:
            feeds = [t.detach().cpu().numpy() for t in _leaves(a)]
            runs.append((a, sess.run(None, {i.name: v for i, v in zip(sess.get_inputs(), feeds)})))
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot run the exported model: {_first_line(exc)}") from exc
    with _eval(model), torch.no_grad():
        return _compare_runs(model, runs, "model.onnx", rtol, atol)


# --------------------------------------------------------------------------- all at once

@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how faithful each file is.

    Attributes:
        out_dir: the output folder.
        paths: format (``pt``, ``pt2``, ``onnx``, ``widths``) -> written file.
        max_abs: format -> max abs difference from eager PyTorch.
        parity: format -> that difference divided by the output scale.
        errors: format -> why it failed (export error or parity outside ``rtol``).
        rtol: the tolerance relative to output scale that parity was held to.
    """

    out_dir: Path
    paths: Dict[str, Path] = field(default_factory=dict)
    max_abs: Dict[str, float] = field(default_factory=dict)
    parity: Dict[str, float] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    rtol: float = DEFAULT_RTOL

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> Dict[str, Any]:
        return {"out_dir": str(self.out_dir), "paths": {k: str(v) for k, v in self.paths.items()},
                "max_abs": self.max_abs, "parity": self.parity, "errors": self.errors,
                "rtol": self.rtol, "ok": self.ok}


def export_model(model: nn.Module, example_input: torch.Tensor, out_dir: PathLike,
                 formats: Set[str], widths_info: Optional[Mapping[str, Any]] = None, *,
                 rtol: float = DEFAULT_RTOL) -> ExportResult:
    """Write ``model.{pt,pt2,onnx}`` and ``widths.json`` into ``out_dir``; never raises on an
    exporter's failure, it records it in :attr:`ExportResult.errors`.

    Args:
        model: the slimmed model.
        example_input: one input batch at the model's input size, or a tuple of the model's
            positional arguments (a detection model's ``([image],)``: ``ModelInfo.model_inputs()``).
        out_dir: created if missing (refusing a non-empty folder is the CLI's job).
        formats: subset of ``{"pt", "pt2", "onnx"}``.
        widths_info: content of ``widths.json`` (:func:`widths_info`); None writes none.
        rtol: parity tolerance relative to the output scale.

    Raises:
        ConfigError: an unknown format name.

    Example:
        >>> res = export_model(small, x, "out", {"pt", "onnx"}, widths_info(graph, spec))
        >>> res.parity["onnx"] <= 1e-4
        True
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ConfigError(f"unknown export format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = ExportResult(out_dir=out, rtol=rtol)
    with _eval(model), torch.no_grad():
        scale = output_scale(model(*_args(example_input)))
    if widths_info is not None:
        res.paths["widths"] = write_widths_json(out / "widths.json", widths_info)
    if "pt" in formats:
        try:
            res.paths["pt"] = save_pt(model, out / "model.pt")
        except Exception as exc:  # e.g. a model holding a lambda cannot be pickled
            res.errors["pt"] = f"{type(exc).__name__}: {_first_line(exc)}"
    for fmt, saver in (("pt2", save_pt2), ("onnx", save_onnx)):
        if fmt not in formats:
            continue
        path = out / f"model.{fmt}"
        try:
            diff = saver(model, example_input, path)
        except Exception as exc:
            res.errors[fmt] = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {_first_line(exc)}"
            continue
        res.paths[fmt] = path
        res.max_abs[fmt] = diff
        res.parity[fmt] = diff / scale if scale > 0 else diff
        if not res.parity[fmt] <= rtol:
            res.errors[fmt] = f"model.{fmt} differs from PyTorch by {res.parity[fmt]:.3g} of the output scale (limit {rtol:g})"
    return res
