"""The zoo's mobile CNNs, written from their papers (no torchvision): MobileNetV2,
MobileNetV3-Small and EfficientNet-B0, with the papers' width multipliers.

Depths, kernel sizes, strides, expansion ratios, activations and squeeze-and-excitation
placement are the papers' tables; the width multiplier scales channels (rounded to multiples
of 8 as the reference implementations do), and 64x64 inputs keep the total stride of 32 (the
last maps are 2x2). The SE blocks are written in two styles users write (modules in
MobileNetV3, functional calls in EfficientNet) so that both lower.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def divisible(v: float, divisor: int = 8) -> int:
    """The reference implementations' channel rounding: the nearest multiple of ``divisor``,
    never below it nor 10 % below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) + BN [+ activation], padding (k - 1) / 2."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU) else act())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- MobileNetV2
#: Sandler et al. 2018, Table 2: expansion t, channels c, repeats n, first stride s
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1x1 expansion (ReLU6), 3x3 depthwise (ReLU6), linear 1x1 projection; the input added
    when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = int(round(cin * t))
        layers: list[nn.Module] = [] if t == 1 else [conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier 0.25 (the paper's 1280-channel last conv scaled too: 320)."""

    def __init__(self, num_classes: int = 10, width: float = 0.25) -> None:
        super().__init__()
        c = divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(3, c, 3, 2, act=nn.ReLU6)]
        for t, ch, n, s in MOBILENET_V2:
            out = divisible(ch * width)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        self.last = divisible(1280 * width)
        layers.append(conv_bn(c, self.last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------- MobileNetV3
#: Howard et al. 2019, Table 2 (MobileNetV3-Small): kernel, expansion, out, SE, activation, stride
MOBILENET_V3_SMALL = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
                      (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
                      (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
                      (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: global pool, 1x1 conv to exp/4 (ReLU), 1x1 conv back, hard sigmoid,
    the input scaled channel by channel (a broadcast multiply)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        squeeze = divisible(c // 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return s * x


class Bneck(nn.Module):
    """MobileNetV3's bottleneck: expansion (where it widens), depthwise k x k, SE, projection."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        a = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = [] if exp == cin else [conv_bn(cin, exp, 1, act=a)]
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=a))
        if se:
            layers.append(SqueezeExcite(exp))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res else y


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small with width multiplier 0.5 (every channel count of Table 2 and the
    1024-wide last layer scaled, as the reference implementation scales them)."""

    def __init__(self, num_classes: int = 10, width: float = 0.5) -> None:
        super().__init__()
        c = divisible(16 * width)
        layers: list[nn.Module] = [conv_bn(3, c, 3, 2, act=nn.Hardswish)]
        for k, exp, out, se, act, s in MOBILENET_V3_SMALL:
            out = divisible(out * width)
            layers.append(Bneck(c, k, divisible(exp * width), out, se, act, s))
            c = out
        layers.append(conv_bn(c, 6 * c, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = divisible(1024 * width)
        self.classifier = nn.Sequential(nn.Linear(6 * c, last), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ----------------------------------------------------------------------------- EfficientNet
#: Tan & Le 2019, Table 1 (EfficientNet-B0): expansion, kernel, stride, channels, layers
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                   (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with SE (ratio 0.25 of the block's input) and SiLU (swish);
    the stochastic-depth drop is the identity at inference."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        self.expand = None if t == 1 else conv_bn(cin, hidden, 1, act=nn.SiLU)
        self.depthwise = conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU)
        squeeze = max(1, cin // 4)
        self.se_reduce = nn.Conv2d(hidden, squeeze, 1)
        self.se_expand = nn.Conv2d(squeeze, hidden, 1)
        self.project = conv_bn(hidden, cout, 1, act=None)
        self.drop = nn.Identity()
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        s = F.adaptive_avg_pool2d(y, 1)
        s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(s))))
        y = self.project(y * s)
        return self.drop(y) + x if self.use_res else y


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 with width coefficient 0.25 (depth coefficient 1: all 16 MBConv blocks),
    head 4 x the last stage's channels as the reference implementation (1280 at width 1)."""

    def __init__(self, num_classes: int = 10, width: float = 0.25) -> None:
        super().__init__()
        c = divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(3, c, 3, 2, act=nn.SiLU)]
        for t, k, s, ch, n in EFFICIENTNET_B0:
            out = divisible(ch * width)
            for i in range(n):
                layers.append(MBConv(c, out, k, s if i == 0 else 1, t))
                c = out
        layers.append(conv_bn(c, 4 * c, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(4 * c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
