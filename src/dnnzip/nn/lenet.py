"""The two LeNets of Deep Compression (Han et al., 2016), for 28×28 single-channel images.

* ``LeNet300100``: fully connected 784-300-100-10 with ReLU — 266 610 parameters.
* ``LeNet5``: the Caffe variant — conv 20@5×5 → max-pool 2 → conv 50@5×5 → max-pool 2 →
  fc 500 (ReLU) → fc 10 — 431 080 parameters. As in Caffe's prototxt the convolutions have
  no non-linearity; only the fc 500 layer is followed by a ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet300100", "LeNet5"]


class LeNet300100(nn.Module):
    """784-300-100-10 multilayer perceptron."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe LeNet: conv(20,5) → pool → conv(50,5) → pool → fc 500 → fc 10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
