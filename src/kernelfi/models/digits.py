"""Two small CNNs for sklearn's digits, shipped with trained weights.

They exist so that every campaign, test and tutorial has a *trained* model whose outcomes
mean something (a random-weights AlexNet misclassifies nothing that matters), while staying
small enough to inject thousands of faults on a laptop CPU. Their shapes mirror the two seed
architectures, so lowering exercises the same Darknet layer vocabulary:

* ``DigitsAlexNet`` — AlexNet-shaped: ``features`` (5 conv+ReLU, 3 max-pools) and
  ``classifier`` (dropout, 3 linear layers): convolutional, maxpool, connected, dropout.
* ``DigitsResNet`` — ResNet-shaped: conv1/bn1/relu/maxpool stem, BasicBlocks with BatchNorm
  and 1x1 downsample shortcuts, global average pool, fc: adds batch-norm and shortcut layers.

Input is 1x32x32 (the 8x8 digit upsampled bilinearly; see ``kernelfi.data.digits``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from kernelfi.models.architectures import BasicBlock, conv1x1

__all__ = ["DigitsAlexNet", "DigitsResNet", "DIGITS_INPUT_SHAPE", "DIGITS_CLASSES"]

DIGITS_INPUT_SHAPE: tuple[int, int, int] = (1, 32, 32)
DIGITS_CLASSES: int = 10


class DigitsAlexNet(nn.Module):
    """AlexNet in miniature: 32x32 -> 16x16 -> 8x8 -> 4x4 feature maps, then 3 linear layers."""

    def __init__(self, num_classes: int = DIGITS_CLASSES, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, stride=1, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 48, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(48, 48, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(48, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(32 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


class DigitsResNet(nn.Module):
    """ResNet in miniature: 16-channel stem, stages of 16/32/64 channels, one BasicBlock each.

    Stages 2 and 3 halve the resolution (16x16 -> 8x8 -> 4x4) through a strided BasicBlock
    whose shortcut is torchvision's ``downsample`` (1x1 conv + BatchNorm), so the state-dict
    keys follow torchvision's pattern (``layer2.0.downsample.0.weight``).
    """

    def __init__(self, num_classes: int = DIGITS_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = nn.Sequential(BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2, downsample=_down(16, 32)))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, stride=2, downsample=_down(32, 64)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def _down(inplanes: int, planes: int) -> nn.Sequential:
    """torchvision's shortcut for a stride-2 block: 1x1 conv, stride 2, then BatchNorm."""
    return nn.Sequential(conv1x1(inplanes, planes, stride=2), nn.BatchNorm2d(planes))
