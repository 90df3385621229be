"""``ModelInfo``: a created model, what it is, and the inputs it takes.

Every torchvision model kind takes its input differently: a classifier, a segmentation model
and a video model one tensor (``B×3×H×W`` or ``B×3×T×H×W``), a detection model a list of
``3×H×W`` images, an optical-flow model an image pair. The channel analysis traces one
module that takes one tensor: the whole model where it traces, else its largest part that
does (``part``, e.g. a detection model's ``backbone`` on the transformed image batch), the
rest being a fixed boundary (``part_reason``).

Example:
    >>> info = create("tv:fasterrcnn_mobilenet_v3_large_320_fpn")       # doctest: +SKIP
    >>> info.kind, info.part, info.example_input().shape                # doctest: +SKIP
    ('detection', 'backbone', torch.Size([1, 3, 320, 320]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch
from torch import nn

KINDS = ("classification", "detection", "segmentation", "video", "flow", "features")
"""What a model computes; decides its inputs and how much of it is traced."""


@dataclass(frozen=True)
class ModelInfo:
    """A created model and what is needed to feed it.

    Attributes:
        model: the module, in eval mode.
        name: canonical name (``tv:resnet50``, ``timm:resnet50.a1_in1k``, ``pkg.mod:build``).
        input_size: (C, H, W) of one input image; (C, T, H, W) of one clip for video.
        data_config: timm ``resolve_data_config``-style preprocessing: ``input_size``,
            ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``.
        kind: one of :data:`KINDS`.
        part: qualname of the sub-module that is traced and slimmed ("" = the whole model).
        part_reason: why the rest of the model is a fixed boundary (empty without a part);
            also the reason shown for the channels the part's outputs fix.
    """

    model: nn.Module
    name: str
    input_size: Tuple[int, ...]
    data_config: Dict[str, Any] = field(default_factory=dict)
    kind: str = "classification"
    part: str = ""
    part_reason: str = ""

    @property
    def analysed(self) -> nn.Module:
        """The module the channel analysis traces: ``part`` of the model, or the model."""
        return self.model.get_submodule(self.part) if self.part else self.model

    @property
    def output_reason(self) -> str:
        """The reason given to the channels the traced module's outputs fix."""
        return self.part_reason or "model output"

    def model_inputs(self, batch: int = 1) -> Tuple[Any, ...]:
        """Deterministic positional arguments of ``model`` (``model(*info.model_inputs())``).

        Example:
            >>> images, = create("tv:ssdlite320_mobilenet_v3_large").model_inputs()  # doctest: +SKIP
            >>> len(images), images[0].shape                                          # doctest: +SKIP
            (1, torch.Size([3, 320, 320]))
        """
        gen = torch.Generator().manual_seed(0)
        if self.kind == "detection":
            # Images in [0, 1], as detection models expect (they normalise inside).
            return ([torch.rand(self.input_size, generator=gen) for _ in range(batch)],)
        if self.kind == "flow":
            # RAFT expects images scaled to [-1, 1].
            shape = (batch, *self.input_size)
            return tuple(2 * torch.rand(shape, generator=gen) - 1 for _ in range(2))
        return (torch.randn((batch, *self.input_size), generator=gen),)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input batch of :attr:`analysed` (the model's, when it has no part).

        For a classifier (and segmentation, video and timm features models) this is a
        standard-normal batch of the model's input size; for a detection model the image
        batch its own transform makes of :meth:`model_inputs`; for RAFT the two images
        stacked, as its feature encoder sees them.

        Example:
            >>> info = create("timm:test_resnet")
            >>> info.example_input(2).shape
            torch.Size([2, 3, 160, 160])
        """
        args = self.model_inputs(batch)
        if self.kind == "detection":
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    return self.model.transform(args[0])[0].tensors
            finally:
                self.model.train(was_training)
        if self.kind == "flow":
            return torch.cat(args, dim=0)
        return args[0]


__all__ = ["KINDS", "ModelInfo"]
