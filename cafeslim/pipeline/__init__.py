"""Orchestration: the run folder, its stages, resume, reports and the exports of a run.

The algorithms live below (``search``, ``supernet``, ``export``); this package puts them
together the way the command line uses them and persists every step:

* :mod:`.rundir` — the folder layout, empty-folder checks, resume checks;
* :mod:`.objects` — settings → model, graph, FLOPs model, bins, budgets, data, fitness;
* :mod:`.stages` — the methods (:data:`~.stages.METHODS`): train, search, multi-stage, uniform;
* :mod:`.random_baseline` — ``--method random``: random widths trained stand-alone;
* :mod:`.run` — :func:`run_search`, the whole ``cafeslim search``;
* :mod:`.recorder`, :mod:`.report` — ``search.jsonl``, ``result.json``, ``report.md``, plots;
* :mod:`.run_export`, :mod:`.uniform` — ``cafeslim export RUN`` and ``export MODEL``;
* :mod:`.throughput` — fitness throughput of a model (``python -m cafeslim.pipeline.throughput``).

Example:
    >>> from cafeslim.pipeline import run_search
    >>> run_search(RunSettings("timm:test_resnet", search=SearchConfig(flops="50%")),
    ...            "runs/demo")                                          # doctest: +SKIP
"""

import importlib

# Lazy: the command line's argument errors should not wait for torch to import.
_EXPORTS = {
    "objects": ["Analysis", "Built", "analyze_info", "at_size", "build", "make_fitness"],
    "random_baseline": ["random_method", "retrain_config", "train_candidate"],
    "report": ["read_result", "result_json", "write_report"],
    "run": ["RunResult", "run_search", "start_run"],
    "run_export": ["RunExportReport", "export_run"],
    "rundir": ["check_resume", "default_run_dir", "is_run_dir",
               "prepare_run_dir"],
    "stages": ["METHODS", "search_stage", "train_stage"],
    "uniform": ["UniformExportReport", "uniform_export"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
