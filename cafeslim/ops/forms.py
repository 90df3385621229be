"""Small helpers for FLOPs formulas: sizes of traced tensors as linear forms of the widths."""

from __future__ import annotations

from typing import Any, List

from .registry import Form, FormFn


def numel(desc: Any, form: FormFn) -> List[Form]:
    """The element count of a traced tensor as a product of one form per dimension."""
    return [form(desc, d) for d in range(len(desc.shape))]


def tensors(op: Any) -> List[Any]:
    """The described tensor inputs of an op record, in call order."""
    return [d for d in op.inputs if d is not None]
