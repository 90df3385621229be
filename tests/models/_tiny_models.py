"""Tiny user models, imported by name (``_tiny_models:build``) in test_create.py."""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class SizedNet(TinyNet):
    default_input_size = (32, 48)


def build():
    return TinyNet()


def build_with_classes(num_classes: int = 10):
    return TinyNet(num_classes=num_classes)


def build_gray():
    return TinyNet(in_chans=1)


def build_sized():
    return SizedNet()


def not_a_model():
    return 42


INSTANCE = TinyNet(num_classes=5)
