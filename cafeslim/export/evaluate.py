"""``cafeslim eval``: accuracy, FLOPs, params and latency of an exported model vs the original.

The target is an export folder (``model.pt``/``model.pt2``/``model.onnx`` + ``widths.json``), a
run folder (its ``export/``), one of those model files, or a model name (the original alone).
``widths.json`` names the source model, its input size and — for exports of a search run —
the data, number of classes and initial weights, so the original is rebuilt to compare with.

* **Accuracy** — the task's metrics (:mod:`cafeslim.tasks`: top-1 and top-5, mIoU and pixel
  accuracy, or mean label accuracy and exact match) on the held-out split: ``val/`` of the
  data folder, or the demo's fixed test part. Never D_val, which the search selected on. The
  task is the export's (``widths.json`` records it), else ``task=``, else classification. The
  original's accuracy is measured only when it has real weights (``--pretrained`` or a weights
  file); a randomly initialised original would only say "chance".
* **Cost** — fvcore FLOPs (one multiply-add = one FLOP) and parameters.
* **Latency** — median wall time of a forward pass in PyTorch (eager, ``inference_mode``) and
  in onnxruntime (CPUExecutionProvider), at each batch size, after warm-up; the original is
  exported to a temporary ONNX file for the comparison.

Every number is also given as a ratio to the original model's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import CheckpointError, DataError

PathLike = Union[str, Path]


@dataclass
class Metric:
    """One row of the report: the target's value, the original's, their ratio (or None)."""

    name: str
    value: Optional[float]
    original: Optional[float]
    unit: str = ""

    @property
    def ratio(self) -> Optional[float]:
        if self.value is None or not self.original:
            return None
        return self.value / self.original

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "value": self.value, "original": self.original,
                "ratio": self.ratio, "unit": self.unit}


@dataclass
class EvalReport:
    """What :func:`evaluate` measured.

    Attributes:
        target: the evaluated folder, file or model name.
        source: the original model's name.
        input_size: ``(C, H, W)``.
        data: where accuracy was measured (None: not measured) and ``images`` how many.
        metrics: the rows (the task's metrics — ``top1``, ``top5``; ``miou``, ``pixel_acc``;
            ``label_acc``, ``exact_match`` —, FLOPs, params, latency per runtime and batch size).
        task: the task whose metrics were measured.
        notes: why something was not measured.
        threads: torch intra-op threads during the latency runs.
    """

    target: str
    source: str
    input_size: Tuple[int, ...]
    data: Optional[str] = None
    images: int = 0
    metrics: List[Metric] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    threads: int = 0
    task: str = "classification"

    def get(self, name: str) -> Optional[Metric]:
        """The row called ``name`` (e.g. ``top1``, ``latency torch b1``)."""
        return next((m for m in self.metrics if m.name == name), None)

    def to_json(self) -> Dict[str, Any]:
        return {"target": self.target, "source": self.source, "task": self.task,
                "input_size": list(self.input_size),
                "data": self.data, "images": self.images, "threads": self.threads,
                "metrics": [m.to_json() for m in self.metrics], "notes": self.notes}


def _locate(target: str) -> Tuple[Optional[Path], Dict[str, Any]]:
    """(export folder or None for a model name, widths.json content or {})."""
    from ..pipeline.report import read_result
    from .widths import read_widths_json
    from ..pipeline.run_export import is_run_dir

    path = Path(target)
    if path.is_file() and path.suffix in (".pt", ".pt2", ".onnx"):
        path = path.parent
    elif not is_run_dir(target):
        return None, {}
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist")
    if not (path / "widths.json").is_file():
        if (path / "result.json").is_file() or (path / "config.yaml").is_file():
            read_result(path)  # a clear error for an unfinished run
            if (path / "export" / "widths.json").is_file():
                path = path / "export"
            else:
                raise CheckpointError(f"{path} is a search run without an export; run "
                                      f"cafeslim export {path} first")
        else:
            raise CheckpointError(f"{path} is neither an export folder (no widths.json) nor a "
                                  "cafeslim run folder")
    return path, read_widths_json(path / "widths.json")


def _load_model(folder: Path) -> Any:
    import torch

    if (folder / "model.pt").is_file():
        # The user's own export: a whole pickled module (its classes must be importable).
        return torch.load(folder / "model.pt", map_location="cpu", weights_only=False).eval()
    if (folder / "model.pt2").is_file():
        return torch.export.load(str(folder / "model.pt2")).module()
    raise CheckpointError(f"{folder} holds no model.pt or model.pt2 to evaluate")


def _accuracy(model: Any, loader: Any, task: Any) -> Tuple[Dict[str, float], int]:
    from ..metrics import measure

    values, n = measure(model, loader, task)
    if n == 0:
        raise DataError("the evaluation split is empty")
    return values, n


def _paired_medians(fns: Sequence[Any], repeats: int, max_seconds: float) -> List[float]:
    """Median seconds of each ``fn()``, timed in alternation after warm-up.

    Alternating the models run by run means a load spike from another process hits both
    alike, so their ratio stays meaningful on a shared machine.
    """
    for fn in fns:
        fn()
        fn()
    times: List[List[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeats and (len(times[0]) < 3 or time.perf_counter() - start < max_seconds):
        for fn, acc in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _latencies(models: Sequence[Any], onnx_paths: Sequence[Optional[Path]], shape: Sequence[int],
               batch_sizes: Sequence[int], repeats: int, max_seconds: float,
               threads: Optional[int] = None) -> List[Dict[str, float]]:
    """Per model, ``{"latency torch b1": s, "latency onnxruntime b1": s, ...}``."""
    import onnxruntime as ort
    import torch

    out: List[Dict[str, float]] = [{} for _ in models]
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) if p
                else None for p in onnx_paths]
    for bs in batch_sizes:
        x = torch.randn(bs, *shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            meds = _paired_medians([lambda m=m: m(x) for m in models], repeats, max_seconds)
        for o, v in zip(out, meds):
            o[f"latency torch b{bs}"] = v
        live = [(i, s) for i, s in enumerate(sessions) if s is not None]
        feed = {"x": x.numpy()}
        fns = [lambda s=s: s.run(None, {s.get_inputs()[0].name: feed["x"]}) for _, s in live]
        for (i, _), v in zip(live, _paired_medians(fns, repeats, max_seconds) if fns else []):
            out[i][f"latency onnxruntime b{bs}"] = v
    return out


def _accuracy_metrics(rep: EvalReport, data: str, info: Any, model: Any, original: Any,
                      exported: bool, meta: Dict[str, Any], batch_size: int, task: Any) -> None:
    """The task's metrics of ``model`` (and of the original with real weights) on ``val/``."""
    from ..config import TrainConfig
    from ..data import build_data

    shape = tuple(info.input_size)
    # Only the held-out split is read: no D_val needed (val_split 0).
    cfg = TrainConfig(batch_size=batch_size, workers=4, seed=int(meta.get("seed") or 0),
                      val_split=0.0, img_size=shape[-1], device="cpu")
    loaders = build_data(data, info, cfg, task)
    if loaders.test is None:
        raise DataError(f"{data} has no val/ folder to evaluate on")
    mine, rep.images = _accuracy(model, loaders.test, task)
    real = bool(meta.get("pretrained") or meta.get("weights")) or not exported
    base: Dict[str, Optional[float]] = {}
    if real and exported:
        base = dict(_accuracy(original, loaders.test, task)[0])
    if not exported:
        base = dict(mine)
    elif not real:
        rep.notes.append("the original has random weights: its accuracy is not measured")
    rep.data = str(data)
    rep.metrics += [Metric(k, mine[k], base.get(k), "%") for k in task.metrics]


def _task(meta: Dict[str, Any], task: Optional[str]) -> Any:
    """The export's task (``widths.json``), else ``task``, else classification."""
    from ..errors import ConfigError
    from ..tasks import get_task

    recorded = meta.get("task")
    if recorded and task and recorded != task:
        raise ConfigError(f"the export was made for {recorded}, not --task {task}")
    return get_task(recorded or task)


def _original(source: str, meta: Dict[str, Any], small: Any, data: Optional[str], task: Any) -> Any:
    """The original model (a ModelInfo) at the export's input size, with its head's classes."""
    import torch

    from ..data import dataset_classes
    from ..models import create
    from ..pipeline.objects import at_size

    shape = tuple(int(v) for v in meta["input_shape"][1:]) if meta.get("input_shape") else None
    num_classes = meta.get("num_classes")
    if small is not None and num_classes is None:  # a plain export: read it off the output
        with torch.inference_mode():
            num_classes = task.num_outputs(small(torch.zeros(1, *shape)))
    if small is None and data is not None:
        num_classes = len(dataset_classes(data, task))
    info = create(source, pretrained=bool(meta.get("pretrained")), weights=meta.get("weights"),
                  num_classes=num_classes)
    if shape is not None and tuple(info.input_size) != shape:
        info = at_size(info, shape[-1])
    return info


def evaluate(target: str, data: Optional[str] = None, *, batch_sizes: Sequence[int] = (1, 32),
             repeats: int = 20, max_seconds: float = 3.0, batch_size: int = 64,
             threads: Optional[int] = None, task: Optional[str] = None) -> EvalReport:
    """Measure an export (or a model) against its original model.

    Args:
        target: an export folder, a run folder (its ``export/``), a ``model.pt``/``.pt2``/
            ``.onnx`` file, or a model name.
        data: ``demo`` or an ImageNet-layout folder with ``val/`` (default: the run's data,
            recorded in ``widths.json``; none for a plain export, then accuracy is skipped).
        batch_sizes: latency batch sizes.
        repeats: timed runs per latency (median), at most; ``max_seconds`` caps each one.
        batch_size: images per accuracy batch.
        threads: onnxruntime intra-op threads (default: its own choice); PyTorch uses its
            current setting (``torch.set_num_threads``).
        task: ``classification``, ``segmentation`` or ``multilabel`` for a model name or an
            export that does not record its task (an export's own task wins; a different one
            is an error).

    Raises:
        CheckpointError: a missing folder or file, or a run without an export.
        DataError: no ``val/`` split in ``data``.
        ConfigError: ``task`` differs from the export's.

    Example:
        >>> rep = evaluate("runs/test_resnet-50pct/export")                  # doctest: +SKIP
        >>> rep.get("flops").ratio, rep.get("top1").value                    # doctest: +SKIP
        (0.49, 0.87)
    """
    import torch

    from ..flops import count_flops, count_params
    from .formats import save_onnx

    folder, meta = _locate(target)
    t = _task(meta, task)
    small = _load_model(folder) if folder is not None else None
    data = data or meta.get("data")
    info = _original(meta.get("source") or target, meta, small, data, t)
    shape = tuple(info.input_size)
    original = info.model.eval()
    model = small if small is not None else original
    rep = EvalReport(target=str(folder or target), source=info.name, input_size=shape,
                     threads=torch.get_num_threads(), task=t.name)
    if data is not None:
        _accuracy_metrics(rep, data, info, model, original, small is not None, meta, batch_size, t)
    else:
        rep.notes.append("no data: pass --data demo|DIR to measure accuracy")
    x = torch.zeros(1, *shape)
    rep.metrics += [Metric("flops", float(count_flops(model, x)), float(count_flops(original, x))),
                    Metric("params", float(count_params(model)), float(count_params(original)))]
    onnx = folder / "model.onnx" if folder is not None and (folder / "model.onnx").is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        orig_onnx: Optional[Path] = Path(tmp) / "original.onnx"
        try:
            save_onnx(original, torch.randn(1, *shape), orig_onnx)
        except Exception as exc:  # noqa: BLE001 - the comparison is optional, say why
            rep.notes.append(f"the original could not be exported to ONNX: {exc}")
            orig_onnx = None
        if small is None:
            mine = _latencies([original], [orig_onnx], shape, batch_sizes, repeats, max_seconds,
                              threads)[0]
            base = mine
        else:
            mine, base = _latencies([model, original], [onnx, orig_onnx], shape, batch_sizes,
                                    repeats, max_seconds, threads)
    for name, value in mine.items():
        rep.metrics.append(Metric(name, value, base.get(name), "s"))
    if onnx is None and small is not None:
        rep.notes.append("no model.onnx in the export: onnxruntime latency not measured")
    return rep


__all__ = ["EvalReport", "Metric", "evaluate"]
