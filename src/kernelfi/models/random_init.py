"""Seeded random weights for models that have no trained weights at hand.

No model weights are downloaded at run time, so ImageNet AlexNet/ResNet run with random
weights unless the user supplies a checkpoint. The weights must still be reproducible (a
campaign is replayed from its seed), independent of PyTorch's global RNG (which other code
consumes), and cheap for ResNet-152. Models are therefore built on the meta device and
materialised here, every parameter and buffer drawn or set from one ``torch.Generator``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

__all__ = ["build_empty", "init_random", "RANDOM_INIT_SCHEME"]

#: Recorded in the weights hash: change it whenever the scheme below changes.
RANDOM_INIT_SCHEME = "he-normal-fan_in/bias0/bn-identity/residual-gamma-1-over-sqrt-blocks/v2"


def build_empty(builder: Callable[[], nn.Module]) -> nn.Module:
    """Build on the meta device (no init cost, no global RNG use), then allocate on the CPU.

    The returned module's tensors hold uninitialised memory: call :func:`init_random` (and
    optionally load a checkpoint over it) before use.
    """
    with torch.device("meta"):
        module = builder()
    return module.to_empty(device="cpu")


@torch.no_grad()
def init_random(module: nn.Module, seed: int) -> nn.Module:
    """He-normal (fan-in, ReLU gain) conv/transposed-conv/linear weights, zero biases, identity
    BatchNorm, PReLU 0.25.

    Fan-in keeps activation scale roughly constant through ReLU layers, so random-weights
    inferences produce finite, non-degenerate outputs. Parameters are drawn in module order,
    so the same seed always gives the same weights. Anything not covered is an error rather
    than left as uninitialised memory.
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    done: set[int] = set()
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
            done.add(id(m.weight))
            if m.bias is not None:
                m.bias.zero_()
                done.add(id(m.bias))
        elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            # an output element sums in_channels x (kernel / stride) terms on average: its fan-in
            taps = math.prod(m.kernel_size) / math.prod(m.stride)
            fan_in = max(1.0, m.in_channels // m.groups * taps)
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
            done.add(id(m.weight))
            if m.bias is not None:
                m.bias.zero_()
                done.add(id(m.bias))
        elif isinstance(m, nn.GroupNorm) and m.affine:  # PyTorch's initial gamma 1, beta 0
            m.weight.fill_(1.0)
            m.bias.zero_()
            done.update((id(m.weight), id(m.bias)))
        elif isinstance(m, nn.PReLU):  # PyTorch's initial slope (no fan-in to scale by)
            m.weight.fill_(0.25)
            done.add(id(m.weight))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            for t, v in ((m.weight, 1.0), (m.bias, 0.0), (m.running_mean, 0.0),
                         (m.running_var, 1.0), (m.num_batches_tracked, 0)):
                if t is not None:
                    t.fill_(v)
                    done.add(id(t))
    # Residual blocks add their branch to the identity: with identity BatchNorm every block
    # doubles the activation variance and a random ResNet-152's logits overflow float32. Scaling
    # each block's last BN gamma by 1/sqrt(blocks) keeps the total growth bounded (about e), so
    # random-weight campaigns see finite, non-saturated probabilities.
    blocks = [m for m in module.modules() if hasattr(m, "downsample") and (hasattr(m, "bn3") or hasattr(m, "bn2"))]
    for m in blocks:
        last = m.bn3 if hasattr(m, "bn3") else m.bn2
        last.weight.fill_(1.0 / math.sqrt(len(blocks)))
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
            if id(t) not in done]
    if left:
        raise TypeError(f"init_random does not know how to initialise {left[:4]}")
    return module
