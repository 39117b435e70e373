"""What the zoo tests, the fuzzer and the soak share: seeded weights with non-trivial BatchNorm
statistics, the lowering error of a module, and a campaign on a module through the registry.

The campaign goes the way a user's goes (``register_model``, a checkpoint of the module's own
weights, ``run_campaign`` into a results database), so a fault the tool fails on is counted as
the store counts it (``Store.tool_errors``), not as a test harness would.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.lowering import Program, lower
from kernelfi.models import list_models, register_model
from kernelfi.store import Store

from nets_classic import DenseNet121, SqueezeNet11, UNetClassifier, VGG16BN
from nets_mobile import EfficientNetB0, MobileNetV2, MobileNetV3Small

MODES = ("rf", "iov", "ioa")
CLASSES = 10
#: the per-channel normalisation the registry applies to inputs in [0, 1]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def unet_up3(num_classes: int) -> nn.Module:
    """The U-Net with 3x3 up-convolutions (a top-level builder: the registry finds it again)."""
    return UNetClassifier(num_classes, upconv=3)


def unet_transposed(num_classes: int) -> nn.Module:
    """The U-Net with ConvTranspose2d(2, stride 2) up-convolutions (Darknet's [deconvolutional])."""
    return UNetClassifier(num_classes, up="transposed")


def unet_bilinear(num_classes: int) -> nn.Module:
    """The U-Net with bilinear upsampling (aligned corners) before each 3x3 up-convolution."""
    return UNetClassifier(num_classes, upconv=3, up="bilinear")


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its builder (``num_classes -> module``) and the input it is scaled to."""

    key: str
    build: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int]


ZOO = (
    ZooEntry("vgg16-bn", VGG16BN, (3, 64, 64)),
    ZooEntry("mobilenet-v2", MobileNetV2, (3, 64, 64)),
    ZooEntry("mobilenet-v3-small", MobileNetV3Small, (3, 64, 64)),
    ZooEntry("efficientnet-b0", EfficientNetB0, (3, 64, 64)),
    ZooEntry("densenet-121", DenseNet121, (3, 64, 64)),
    ZooEntry("squeezenet-1.1", SqueezeNet11, (3, 44, 44)),
    ZooEntry("unet-classifier", UNetClassifier, (3, 32, 32)),
    ZooEntry("unet-classifier-up3", unet_up3, (3, 32, 32)),
    ZooEntry("unet-classifier-tconv", unet_transposed, (3, 32, 32)),
    ZooEntry("unet-classifier-bilinear", unet_bilinear, (3, 32, 32)),
)


@torch.no_grad()
def seeded(module: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """``module`` with seeded weights and BatchNorm statistics a trained network would have.

    He-normal weights and small random biases; BN affine parameters drawn around (1, 0); the
    running statistics measured on one seeded batch in training mode (cumulative average),
    so they are neither the identity nor far from what the layer sees: every BN really
    shifts and scales, and activations stay finite through a hundred layers. Returned in
    eval mode with gradients off."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel()))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative: one batch gives its own statistics
    x = torch.randn(8, *input_shape, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # dropout in training mode draws from the global generator
        module.train()(x)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return module.eval().requires_grad_(False)


@dataclass(frozen=True)
class Agreement:
    """The lowered program against the native forward on seeded inputs: ``error`` is
    max |lowered - native| / ``scale``, ``scale`` max |native| (the logit scale);
    ``error64`` and ``native64`` the lowered and the native float32 logits against the
    module's float64 forward (same relative measure)."""

    error: float
    scale: float
    logits: torch.Tensor
    probs: torch.Tensor
    error64: float
    native64: float

    @property
    def exact(self) -> bool:
        """Within 1e-5 of the native forward, or, where float32 rounding alone puts the native
        forward that far from the true one (a subtraction that cancels, a BN that amplifies:
        found by the fuzzer), within 1e-5 of the float64 forward, or, where even that is out of
        float32's reach (the native forward itself more than 1e-5 from the float64 one: a
        GroupNorm of a map that is constant but for rounding divides ulps by sqrt(eps), found
        by the fuzzer), no farther from the float64 forward than the native forward is."""
        return self.error <= 1e-5 or self.error64 <= 1e-5 or (self.native64 > 1e-5 and self.error64 <= self.native64)


def lowering_error(module: nn.Module, program: Program, input_shape: tuple[int, ...], n: int = 2,
                   seed: int = 1) -> Agreement:
    """How far the lowered logits are from the module's own over ``n`` seeded inputs."""
    x = torch.randn(n, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = module(x)
        logits, probs = program.forward(x)
        ref64 = copy.deepcopy(module).double()(x.double())  # a copy: the caller's module stays float32
    scale = ref.abs().max().item()
    scale64 = ref64.abs().max().item()
    return Agreement((logits - ref).abs().max().item() / scale, scale, logits, probs,
                     (logits.double() - ref64).abs().max().item() / scale64,
                     (ref.double() - ref64).abs().max().item() / scale64)


def register(name: str, build: Callable[[int], nn.Module], input_shape: tuple[int, int, int]) -> None:
    """Register ``build`` under ``name`` once per process (the registry refuses duplicates)."""
    if name not in {m.name for m in list_models()}:
        c = input_shape[0]
        register_model(name, input_shape=input_shape, num_classes=CLASSES, mean=MEAN[:1] * c, std=STD[:1] * c,
                       description=f"test model {name}", default_data="random")(build)


@dataclass(frozen=True)
class ModeRun:
    mode: str
    injections: int
    outcomes: dict[str, int]
    tool_errors: list[str]
    seconds: float


def campaign(model: str, module: nn.Module, where: Path, n: int, modes: tuple[str, ...] = MODES,
             seed: int = 1, inputs: int = 2) -> list[ModeRun]:
    """A campaign of ``n`` injections per mode on ``model`` (a registered name or a model file
    ``PATH.py:FACTORY``) with ``module``'s own weights, saved as a checkpoint and loaded over
    the builder's as a user's are, on seeded random inputs."""
    stem = Path(model.rpartition(":")[0] or model).stem
    weights = where / f"{stem}.pt"
    torch.save(module.state_dict(), weights)
    db = str(where / f"{stem}.db")
    out = []
    for mode in modes:
        t0 = time.perf_counter()
        cid = run_campaign(CampaignConfig(ModelSpec(model, weights=str(weights)), mode, "single", n=n, seed=seed,
                                          data="random", inputs=inputs), db)
        seconds = time.perf_counter() - t0
        with Store(db, create=False, readonly=True) as s:
            counts = s.outcome_counts(cid)
            errors = [f"{e.error} ({e.replay})" for e in s.tool_errors(cid)]
        out.append(ModeRun(mode, sum(counts.values()) + len(errors), counts, errors, seconds))
    return out


def lowered(entry: ZooEntry, seed: int = 0) -> tuple[nn.Module, Program]:
    """The zoo model with seeded weights and its lowering."""
    module = seeded(entry.build(CLASSES), entry.input_shape, seed)
    return module, lower(module, entry.input_shape, entry.key)
