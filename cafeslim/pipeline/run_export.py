"""``cafeslim export RUN``: the sub-network a search chose, as a physically smaller model.

The run folder says everything: ``config.yaml`` rebuilds the model, graph, bins and data
exactly as the search saw them (:func:`cafeslim.pipeline.objects.build`), ``result.json`` names the
winning IndexSpec of each budget and the checkpoint it was found on. With ``init="inherit"``
the supernet weights are loaded, BatchNorm is recalibrated for that spec on the very batches the
search used, and the spec is slimmed out of the supernet (:meth:`Supernet.export_subnet`), so
the exported model computes what the search measured. With ``init="scratch"`` the slimmed model
gets fresh weights instead, for training from scratch as the paper does.

The parity report runs D_val (the batches the search scored on) through the supernet
sub-network, the slimmed PyTorch model and onnxruntime, and gives each one's D_val score (the
run's task's metric: top-1, mIoU, mean label accuracy) and the largest absolute difference of
the scored output — the search's recorded score must be reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Union

from ..config import ExportConfig, choices, load_settings
from ..errors import CheckpointError, ConfigError
from ..export.formats import FORMATS
from ..config import ensure_empty_dir
from .rundir import is_run_dir  # noqa: F401 - part of this module's API

PathLike = Union[str, Path]
INITS = choices(ExportConfig, "init")


@dataclass
class ParityRow:
    """One model's view of D_val: its score (``top1``: the task's metric) and the max abs
    difference of the scored output to its reference."""

    what: str
    top1: Optional[float]
    max_abs: Optional[float] = None
    reference: str = ""


@dataclass
class RunExportReport:
    """What :func:`export_run` did.

    Attributes:
        run_dir, out_dir: the run and the export folder.
        budget: the budget as written in the run (``50%``, ``2G``).
        init: ``inherit`` or ``scratch``.
        recorded_top1: the D_val top-1 the search recorded for this sub-network.
        parity: supernet sub-network, slimmed model and onnxruntime on D_val.
        flops_before, flops_after: fvcore FLOPs of the full and the exported model.
        flops_predicted: the FLOPs model's value recorded by the search (must equal fvcore's).
        params_before, params_after: parameter counts.
        files: written files; errors: format -> why it failed.
        images: D_val images the parity was measured on.
        score_label: what the scores are (the task's metric: ``top-1``, ``mIoU``, ...).
    """

    run_dir: Path
    out_dir: Path
    budget: str
    init: str
    recorded_top1: float
    parity: List[ParityRow] = field(default_factory=list)
    flops_before: float = 0.0
    flops_after: float = 0.0
    flops_predicted: float = 0.0
    params_before: int = 0
    params_after: int = 0
    files: List[Path] = field(default_factory=list)
    errors: Dict[str, str] = field(default_factory=dict)
    images: int = 0
    score_label: str = "top-1"

    def top1(self, what: str) -> Optional[float]:
        """Top-1 of a parity row by the start of its name (``supernet``, ``slimmed``, ``onnx``)."""
        return next((r.top1 for r in self.parity if r.what.startswith(what)), None)


def pick_budget(result: Dict[str, Any], budget: Optional[str]) -> Dict[str, Any]:
    """The ``result.json`` entry of ``budget`` (the only one when None).

    Raises:
        ConfigError: several budgets and none picked, or an unknown budget.
    """
    rows = result["budgets"]
    names = ", ".join(r["budget"] for r in rows)
    if budget is None:
        if len(rows) > 1:
            raise ConfigError(f"the run searched several budgets ({names}); pick one with --budget")
        return rows[0]
    for r in rows:
        if r["budget"].replace(" ", "").lower() == budget.replace(" ", "").lower():
            return r
    raise ConfigError(f"the run has no budget {budget!r}; it searched {names}")


def export_run(run_dir: PathLike, budget: Optional[str] = None, *, init: str = "inherit",
               formats: Collection[str] = FORMATS, out_dir: Optional[PathLike] = None,
               force: bool = False) -> RunExportReport:
    """Export the sub-network a search run chose for ``budget``.

    Args:
        run_dir: a finished ``cafeslim search`` run folder.
        budget: which of the run's budgets (as written, e.g. ``50%``); needed only when the run
            searched several.
        init: ``inherit`` (supernet weights, recalibrated BN) or ``scratch`` (fresh weights).
        formats: subset of ``pt``, ``pt2``, ``onnx``.
        out_dir: default ``RUN/export`` (``RUN/export/<budget>`` for a multi-budget run).
        force: write into a non-empty ``out_dir``.

    Returns:
        A :class:`RunExportReport`.

    Raises:
        CheckpointError: missing, foreign or unfinished run folder, or a checkpoint that does
            not fit the run.
        ConfigError: unknown budget, init or format.
        OutputExistsError: ``out_dir`` is not empty and ``force`` is False.

    Example:
        >>> rep = export_run("runs/test_resnet-50pct")                          # doctest: +SKIP
        >>> rep.top1("slimmed") == rep.recorded_top1 == rep.top1("onnx")        # doctest: +SKIP
        True
    """
    from ..export.formats import export_model
    from ..export.widths import widths_info, write_widths_json
    from ..flops import count_flops, count_params
    from .report import read_result

    if init not in INITS:
        raise ConfigError(f"--init must be one of {', '.join(INITS)}, not {init!r}")
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ConfigError(f"--format takes {', '.join(FORMATS)}; got {', '.join(sorted(unknown))}")
    run_dir = Path(run_dir)
    result = read_result(run_dir)
    settings = load_settings(run_dir)
    entry = pick_budget(result, budget)
    slug = entry["budget"].replace("%", "pct").replace(" ", "")
    out = Path(out_dir) if out_dir is not None else (
        run_dir / "export" if len(result["budgets"]) == 1 else run_dir / "export" / slug)
    ensure_empty_dir(out, force)

    b, net, spec, small, fitness, rows = _subnet(run_dir, settings, result, entry, init)
    x = b.info.example_input()
    flops_before = float(b.fm.fvcore_full or count_flops(b.info.model, x))
    flops_after = float(count_flops(small, x))
    meta = widths_info(b.graph, spec, source=b.info.name, slim_model=small, original=b.info.model,
                       flops=flops_after, full_flops=flops_before,
                       extra=_provenance(run_dir, settings, result, entry, init))
    res = export_model(small, x, out, set(formats), meta)
    rep = RunExportReport(run_dir, out, entry["budget"], init, float(entry["top1"]),
                          flops_before=flops_before, flops_after=flops_after,
                          flops_predicted=float(entry["flops"]),
                          params_before=count_params(b.info.model), params_after=count_params(small),
                          files=[res.paths[f] for f in ("widths", *FORMATS) if f in res.paths],
                          errors=dict(res.errors), score_label=fitness.task.label())
    rep.parity = rows + _parity(net if init == "inherit" else None, spec, small,
                                res.paths.get("onnx"), fitness.val, rep, fitness.task)
    if init == "inherit" and "widths" in res.paths:  # what the user gets, measured on D_val
        meta["top1_dval"] = rep.top1("slimmed")
        write_widths_json(res.paths["widths"], meta)
    return rep


def _subnet(run_dir: Path, settings: Any, result: Dict[str, Any], entry: Dict[str, Any],
            init: str) -> tuple:
    """Rebuild the run and cut out ``entry``'s sub-network (supernet weights or fresh ones).

    Returns:
        ``(built, supernet, spec, small model in eval mode, fitness, parity rows so far)``.
    """
    import torch

    from ..export.slim import slim
    from ..graph import spec_from_json
    from ..supernet import Supernet
    from .objects import build, make_fitness

    b = build(settings)
    if b.info.name != result["model"]:
        raise CheckpointError(f"{run_dir} was searched on {result['model']}, its config builds "
                              f"{b.info.name}")
    spec = b.graph.validate_spec(spec_from_json(entry["spec"]))
    net = Supernet(b.info.model, b.graph, b.space)
    if entry.get("checkpoint"):
        _load_weights(net, run_dir / entry["checkpoint"], b.info.name)
    fitness = make_fitness(b, net, offset=0)
    rows: List[ParityRow] = []
    if init == "inherit":
        # Recalibrates BN on the search's batches and keeps the statistics for export_subnet.
        rows.append(ParityRow("supernet sub-network", fitness.score_spec(spec)))
        small = net.export_subnet(spec)
    else:
        small = slim(b.info.model, b.graph, spec)
        torch.manual_seed(settings.train.seed)
        for m in small.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()  # conv/linear init, BN weight 1 bias 0 and fresh statistics
    return b, net, spec, small.eval(), fitness, rows


def _provenance(run_dir: Path, settings: Any, result: Dict[str, Any], entry: Dict[str, Any],
                init: str) -> Dict[str, Any]:
    """What ``widths.json`` records about the run an export came from."""
    return {"method": f"search:{result['method']}", "run": str(run_dir), "task": settings.task,
            "budget": entry["budget"], "init": init, "top1_recorded": entry["top1"],
            "flops_predicted": entry["flops"], "num_classes": result.get("num_classes"),
            "data": settings.data, "img_size": settings.train.img_size, "seed": settings.train.seed,
            "val_split": settings.train.val_split, "pretrained": settings.pretrained,
            "weights": settings.weights}


def _load_weights(net: Any, path: Path, model_name: str) -> None:
    from ..supernet.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    found = (ckpt.get("fingerprint") or {}).get("model")
    if found != model_name:
        raise CheckpointError(f"checkpoint {path} was made for model {found}, not {model_name}")
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the run's model: "
                              f"{str(exc).splitlines()[0]}") from None


def _parity(net: Any, spec: Any, small: Any, onnx_path: Optional[Path], batches: Any,
            rep: RunExportReport, task: Any) -> List[ParityRow]:
    """D_val score of the slimmed model and onnxruntime, max abs differences of the scored output."""
    import torch

    from ..tasks.base import outputs_like

    sess = None
    if onnx_path is not None:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meters = {"slim": task.meter(), "onnx": task.meter()}
    diff = {"slim": 0.0, "onnx": 0.0}
    if net is not None:
        net.eval()
        net.set_subnet(spec)
    with torch.inference_mode():
        for images, labels in batches:
            out = small(images)
            y = task.select(out)
            meters["slim"].update(y, labels)
            if net is not None:
                diff["slim"] = max(diff["slim"], float((y - task.select(net(images))).abs().max()))
            if sess is not None:
                # The file's outputs are the model's tensors in order: take the scored one.
                z = torch.from_numpy(outputs_like(out, y, sess.run(None, {sess.get_inputs()[0].name: images.numpy()})))
                meters["onnx"].update(z, labels)
                diff["onnx"] = max(diff["onnx"], float((z - y).abs().max()))
    if net is not None:
        net.set_subnet(None)
    rep.images = n = meters["slim"].count
    score = {k: m.compute()[task.metric] if n else 0.0 for k, m in meters.items()}
    rows = [ParityRow("slimmed model (PyTorch)", score["slim"],
                      diff["slim"] if net is not None else None,
                      "supernet sub-network" if net is not None else "")]
    if sess is not None:
        rows.append(ParityRow("onnxruntime (model.onnx)", score["onnx"], diff["onnx"],
                              "slimmed model"))
    return rows


__all__ = ["INITS", "ParityRow", "pick_budget", "RunExportReport", "export_run", "is_run_dir"]
