"""The small conv-BN network with a residual add that the min-min and batched tests share."""

import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """conv-bn-relu x3 with a residual add, pooled into a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24)
        self.conv3, self.bn3 = nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(x)))
        y = F.relu(y + self.bn3(self.conv3(y)))
        return self.fc(y.mean((2, 3)))
