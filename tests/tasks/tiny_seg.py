"""A tiny segmentation network for fast tests: torchvision's output form, ``{"out": logits}``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class TinySeg(nn.Module):
    """Two conv-BN-ReLU blocks at stride 2 and a 1×1 classifier, upsampled to the input."""

    default_input_size = 32

    def __init__(self, num_classes: int = 11):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        y = self.classifier(self.body(x))
        return {"out": F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def build(num_classes: int = 11) -> nn.Module:
    return TinySeg(num_classes)
