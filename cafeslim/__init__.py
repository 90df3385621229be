"""cafeslim: FLOPs-budgeted width search (CafeNet, ICLR 2021) for arbitrary vision models.

The package is laid out by pipeline stage, with the orchestration of the command line apart::

    models ─► graph ─► flops ─► bins ─► supernet ─► search ─► export
                                                 data ─┘
    config (settings) · pipeline (run folder, stages, reports) · cli

The Python API (README, "Python API") works on any ``nn.Module``:

Example:
    >>> import cafeslim
    >>> graph = cafeslim.analyze(model, x)                                  # doctest: +SKIP
    >>> net = cafeslim.Supernet(model, graph, cafeslim.make_bins(graph))    # doctest: +SKIP
    >>> result = cafeslim.search_widths(net, val_batches, recal_batches, budget="50%")  # doctest: +SKIP
    >>> small = cafeslim.slim(model, graph, result.spec)                    # doctest: +SKIP
    >>> out = cafeslim.train(small, loaders, cafeslim.RetrainConfig(epochs=10))  # doctest: +SKIP

Other tasks than classification: ``cafeslim.get_task("segmentation")`` (or ``"multilabel"``)
gives the loss for ``minmin_step`` (``task.loss``) and the metric for ``search_widths(...,
task=task)`` and ``train(..., task=task)``.
"""

import importlib

__version__ = "0.1.0"

# Lazy: ``import cafeslim`` (and the CLI's ``--help``) must not wait for torch.
_EXPORTS = {
    "api": ["API_SEARCH", "SearchOutcome", "Transfer", "export_files", "make_bins", "minmin_step",
            "search_widths", "transfer_widths"],
    "config": ["BinsConfig", "MinMinConfig", "RetrainConfig", "SearchConfig", "TrainConfig"],
    "errors": ["CafeslimError"],
    "export.slim": ["slim"],
    "graph": ["analyze"],
    "models": ["create"],
    "ops": ["OpHandler", "register_op", "registered_op", "unregister_op"],
    "supernet": ["Supernet"],
    "tasks": ["get_task"],
    "training": ["train"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
