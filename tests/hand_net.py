"""Hand-weighted models for the API and model-file tests (imported by path in worker processes).

``Hand`` (input 1x2x2): a 1x1 convolution of weight 2 and bias 0, ReLU, flatten, and a linear
layer whose two rows pick the first and the last pixel. Input [[1, 2], [3, 4]] gives logits
(2, 8), class 1; input [[4, 0], [0, 1]] gives (8, 2), class 0.
"""
from __future__ import annotations

import torch
from torch import nn

X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[4.0, 0.0], [0.0, 1.0]]]])
LOGITS = torch.tensor([[2.0, 8.0], [8.0, 2.0]])
Y = torch.tensor([1, 1])  # the second one is misclassified: golden accuracy 1 of 2


class Hand(nn.Module):
    input_shape = (1, 2, 2)

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.fc = nn.Linear(4, num_classes)
        with torch.no_grad():
            self.conv.weight.fill_(2.0)
            self.conv.bias.zero_()
            self.fc.weight.zero_()
            self.fc.weight[0, 0] = 1.0
            self.fc.weight[1, 3] = 1.0
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build() -> nn.Module:
    """A factory function: the same model."""
    return Hand()


class Wide(nn.Module):
    """Needs an argument: no factory by default."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def build_other() -> nn.Module:
    """Same keys and shapes as ``Hand``, another forward (no ReLU, doubled logits)."""
    return _Other()


class _Other(Hand):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.fc(self.conv(x).flatten(1))
