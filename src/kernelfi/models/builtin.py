"""The models kernelfi ships: torchvision AlexNet/ResNets, the digits models, Darknet's AlexNet
and ResNet-50/101/152 (the stock cfgs; the other shipped ResNet/ResNeXt cfgs load by path).

ImageNet models use torchvision's preprocessing constants so torchvision checkpoints see the
inputs they were trained on. The digits models read their normalisation and accuracy from
``assets/digits.json``, written by ``scripts/train_digits.py`` together with the weights.
"""
from __future__ import annotations

import json
from typing import Any

from torch import nn

from kernelfi.models.architectures import (
    AlexNet, resnet18, resnet34, resnet50, resnet101, resnet152,
)
from kernelfi.models.digits import DIGITS_CLASSES, DIGITS_INPUT_SHAPE, DigitsAlexNet, DigitsResNet
from kernelfi.models.registry import ASSETS, register_darknet, register_model

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_SHAPE: tuple[int, int, int] = (3, 224, 224)


def digits_meta() -> dict[str, Any]:
    """``assets/digits.json`` (mean, std, test accuracies), or neutral values before training."""
    path = ASSETS / "digits.json"
    if not path.is_file():
        return {"mean": [0.0], "std": [1.0], "test_accuracy": {}}
    return json.loads(path.read_text())


@register_model("alexnet", input_shape=IMAGENET_SHAPE, num_classes=1000, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, head="classifier.6.weight",
                description="torchvision AlexNet (ImageNet shape; --num-classes sets the classifier "
                            "width: the published AlexNet study classified 7 classes)")
def _alexnet(num_classes: int) -> nn.Module:
    return AlexNet(num_classes=num_classes)


for _name, _fn, _depth in (("resnet18", resnet18, 18), ("resnet34", resnet34, 34),
                           ("resnet50", resnet50, 50), ("resnet101", resnet101, 101),
                           ("resnet152", resnet152, 152)):
    register_model(_name, input_shape=IMAGENET_SHAPE, num_classes=1000, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, head="fc.weight",
                   description=f"torchvision ResNet-{_depth} (ImageNet shape)")(_fn)

_META = digits_meta()
_MEAN = tuple(float(v) for v in _META["mean"])
_STD = tuple(float(v) for v in _META["std"])


def _acc(name: str) -> str:
    acc = _META.get("test_accuracy", {}).get(name)
    return f"; test accuracy {100 * acc:.1f}%" if acc is not None else ""


@register_model("digits-alexnet", input_shape=DIGITS_INPUT_SHAPE, num_classes=DIGITS_CLASSES,
                mean=_MEAN, std=_STD, default_data="digits", head="classifier.6.weight",
                embedded="digits-alexnet.safetensors", fixed_classes=True,
                description="AlexNet-shaped CNN trained on sklearn digits (1x32x32)"
                            + _acc("digits-alexnet"))
def _digits_alexnet(num_classes: int) -> nn.Module:
    return DigitsAlexNet(num_classes=num_classes)


@register_model("digits-resnet", input_shape=DIGITS_INPUT_SHAPE, num_classes=DIGITS_CLASSES,
                mean=_MEAN, std=_STD, default_data="digits", head="fc.weight",
                embedded="digits-resnet.safetensors", fixed_classes=True,
                description="ResNet-shaped CNN trained on sklearn digits (1x32x32)"
                            + _acc("digits-resnet"))
def _digits_resnet(num_classes: int) -> nn.Module:
    return DigitsResNet(num_classes=num_classes)


register_darknet("alexnet-darknet", ASSETS / "alexnet.cfg",
                 description="Darknet's alexnet.cfg (layers 0-13, the network of the published "
                             "AlexNet study), built by kernelfi.models.darknet")
for _depth in (50, 101, 152):
    register_darknet(f"resnet{_depth}-darknet", ASSETS / f"resnet{_depth}.cfg", input_shape=(3, 256, 256),
                     description=f"Darknet's resnet{_depth}.cfg (256x256, shortcuts without projections, "
                                 "as in the published ResNet study), built by kernelfi.models.darknet")
