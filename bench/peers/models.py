"""The bench's models, and how every process (the bench, kernelfi's workers) builds one alike."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from kernelfi.data import load_inputs
from kernelfi.lowering import Program, lower
from kernelfi.models import load_model


@dataclass(frozen=True)
class Bench:
    registry: str
    kwargs: dict
    shape: tuple[int, int, int]
    data: str
    inputs: int
    n_full: int
    n_quick: int
    batch_full: int
    batch_quick: int


MODELS: dict[str, Bench] = {
    # kernelfi's registry AlexNet is torchvision's (224x224 in its metadata); its
    # AdaptiveAvgPool makes 227x227 give the same 6x6 feature map, and kernelfi lowers it at
    # 227x227 (the avgpool becomes an identity and disappears from the trace).
    "alexnet": Bench("alexnet", {"num_classes": 7}, (3, 227, 227), "random", 8, 2048, 256, 64, 64),
    "resnet50": Bench("resnet50", {}, (3, 224, 224), "random", 4, 512, 64, 64, 64),
    "digits-alexnet": Bench("digits-alexnet", {}, (1, 32, 32), "digits", 32, 4096, 512, 64, 64),
}


@dataclass
class Built:
    module: nn.Module
    program: Program
    x: torch.Tensor
    note: str


def build(name: str) -> Built:
    """Model (random weights from the registry's fixed seed), its lowering at the bench's input
    size, and the inputs: the same bits in every process."""
    b = MODELS[name]
    lm = load_model(b.registry, **b.kwargs)
    program = lower(lm.module, b.shape, name)
    info = dataclasses.replace(lm.info, input_shape=b.shape)
    x = load_inputs(b.data, info, b.inputs).x.to(torch.float32).contiguous()
    return Built(lm.module, program, x, lm.note)
