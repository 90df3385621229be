"""Export: turn an IndexSpec into a physically smaller model and write it to disk.

``slim`` rewrites a copy of the model; ``sliced_state``,
``module_attributes`` and ``patched_attributes`` are the same machinery without the copy,
for the supernet. ``export_model`` writes ``model.pt``, ``model.pt2``, ``model.onnx`` and
``widths.json`` and checks each against eager PyTorch.
"""

from .formats import (
    ExportError,
    ExportResult,
    export_model,
    output_scale,
    save_onnx,
    save_pt,
    save_pt2,
)
from .widths import read_widths_json, widths_info, write_widths_json
from .slim import module_attributes, patched_attributes, slim, sliced_state

__all__ = [
    "ExportError",
    "ExportResult",
    "export_model",
    "module_attributes",
    "output_scale",
    "patched_attributes",
    "read_widths_json",
    "save_onnx",
    "save_pt",
    "save_pt2",
    "slim",
    "sliced_state",
    "widths_info",
    "write_widths_json",
]
