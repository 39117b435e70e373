"""The zoo's classic CNNs, written from their papers (no torchvision): VGG-16 with BN, SqueezeNet
1.1, DenseNet-121 and a small U-Net-style encoder-decoder with a classification head.

Each keeps its paper's depth and layer order; widths and inputs are scaled down so that a
lowering and a campaign take seconds (what each one scales is said in its docstring and in
``tests/zoo/README.md``). Written the way a user writes them (modules, ``torch.cat``, functional
pooling), since the zoo checks that the lowering takes a user's model as it comes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: VGG configuration D (Simonyan & Zisserman 2015, Table 1): channels, "M" a 2x2 max pool
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16BN(nn.Module):
    """VGG-16 (configuration D) with a BatchNorm after every convolution (Ioffe & Szegedy).

    Scaled: channels / 8 (8 .. 64), classifier 4096 -> 128, 10 classes, 64x64 input: the five
    pools leave 2x2, which the adaptive pool (torchvision's 7x7, here 2x2) keeps as it is."""

    def __init__(self, num_classes: int = 10, width: float = 1 / 8, hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(int(v) * width)
                layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(c * 2 * 2, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 (Iandola et al. 2016; v1.1 of the authors' repository: 3x3 stem of 64,
    pools after the stem and fires 2 and 4, all with ``ceil_mode``).

    Scaled: channels / 4, 44x44 input, chosen so that ceil_mode changes a shape (the second
    pool gives 5x5 where floor gives 4x4), 10 classes."""

    def __init__(self, num_classes: int = 10, width: float = 1 / 4) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(1, int(c * width))

        self.features = nn.Sequential(
            nn.Conv2d(3, w(64), kernel_size=3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(w(64), w(16), w(64), w(64)), Fire(w(128), w(16), w(64), w(64)),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(w(128), w(32), w(128), w(128)), Fire(w(256), w(32), w(128), w(128)),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(w(256), w(48), w(192), w(192)), Fire(w(384), w(48), w(192), w(192)),
            Fire(w(384), w(64), w(256), w(256)), Fire(w(512), w(64), w(256), w(256)))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), nn.Conv2d(w(512), num_classes, kernel_size=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(bn_size * k)-BN-ReLU-Conv3x3(k) on the concatenation of every earlier map."""

    def __init__(self, inplanes: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(inplanes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, bn_size * growth, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, inplanes: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(inplanes + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 halving the channels (compression 0.5), then a 2x2 average pool."""

    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(inplanes, outplanes, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet121(nn.Module):
    """DenseNet-121 (Huang et al. 2017, DenseNet-BC: blocks of 6, 12, 24, 16 layers,
    bottleneck 4k, compression 0.5): 120 convolutions and the classifier.

    Scaled: growth rate k = 8 (paper 32), stem 2k = 16 channels, 64x64 input (the blocks run at
    16, 8, 4 and 2 pixels), 10 classes."""

    def __init__(self, num_classes: int = 10, growth: int = 8, blocks: tuple[int, ...] = (6, 12, 24, 16),
                 bn_size: int = 4) -> None:
        super().__init__()
        c = 2 * growth
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, c, kernel_size=7, stride=2, padding=3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(c))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x), inplace=True)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class DoubleConv(nn.Sequential):
    """U-Net's two 3x3 convolutions, each with BN and ReLU ('same' padding, as most re-implementations)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding="same", bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding="same", bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    """The 'up-convolution': upsampling then a 2x2 convolution halving the channels (Ronneberger
    et al. 2015), concatenated with the encoder's map of the same size, then a double conv.
    ``mode``: "nearest" (nearest upsampling, then the k x k convolution), "bilinear" (bilinear
    upsampling with aligned corners, then the convolution) or "transposed" (one 2x2 stride-2
    ConvTranspose2d, as most re-implementations write the up-convolution; ``k`` unused)."""

    def __init__(self, cin: int, cout: int, k: int = 2, mode: str = "nearest") -> None:
        super().__init__()
        if mode == "transposed":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.reduce: nn.Module = nn.Identity()
        else:
            self.up = nn.Upsample(scale_factor=2, mode=mode, **({"align_corners": True} if mode == "bilinear" else {}))
            self.reduce = nn.Conv2d(cin, cin // 2, kernel_size=k, padding="same")
        self.conv = DoubleConv(cin // 2 + cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.reduce(self.up(x))
        return self.conv(torch.cat([skip, x], dim=1))


class UNetClassifier(nn.Module):
    """A small U-Net: three 2x2 max-pool downsamplings of double convs (8, 16, 32, bottleneck 64
    channels), three up-convolutions back with skip concatenations, a 1x1 convolution to the
    classes and the spatial mean as the classification head.

    Scaled: 4 levels of 8 .. 64 channels (paper: 5 of 64 .. 1024), 32x32 input, 10 classes.
    ``upconv``: the up-convolution's kernel (the paper's 2; 3 as many re-implementations);
    ``up``: how it upsamples (``Up``'s mode)."""

    def __init__(self, num_classes: int = 10, base: int = 8, upconv: int = 2, up: str = "nearest") -> None:
        super().__init__()
        chans = [base, 2 * base, 4 * base, 8 * base]
        self.inc = DoubleConv(3, chans[0])
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(DoubleConv(a, b) for a, b in zip(chans, chans[1:]))
        self.up = nn.ModuleList(Up(b, a, upconv, up) for a, b in reversed(list(zip(chans, chans[1:]))))
        self.head = nn.Conv2d(chans[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(self.pool(skips[-1])))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x).mean((2, 3))
