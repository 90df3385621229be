"""Every registered op handler, on the tiny model it declares, through ``check_model``.

A handler without a tiny model fails here, so no handler goes untested. Each model must run
slimmed, stay equivalent, have FlopsModel == fvcore and export to ONNX (and .pt2).
"""

import pytest
import torch

from cafeslim.export.verify import check_model
from cafeslim.graph import analyze
from cafeslim.ops import OpHandler, handlers

HANDLERS = handlers()


@pytest.mark.parametrize("handler", HANDLERS, ids=[h.name for h in HANDLERS])
def test_handler_on_its_tiny_model(handler, monkeypatch):
    example = handler.example()
    assert example is not None, f"{handler.name} declares no tiny model (OpHandler.example)"
    model, x = example
    model.eval()
    if type(handler).trace is not OpHandler.trace:
        # The model must really reach the handler's channel rule.
        calls = []
        rule = handler.trace
        monkeypatch.setattr(handler, "trace", lambda *a, **k: calls.append(1) or rule(*a, **k))
        analyze(model, x)
        monkeypatch.undo()
        assert calls, f"{handler.name}'s tiny model never reaches its trace rule"
    torch.manual_seed(0)
    report = check_model(model, x, handler.name, n_specs=2)
    failed = {k: report.details.get(k) for k, ok in report.properties.items() if not ok}
    assert report.passed, failed


def test_handler_names_are_unique():
    names = [h.name for h in HANDLERS]
    assert len(names) == len(set(names))
