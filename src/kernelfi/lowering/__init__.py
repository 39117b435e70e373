"""Lowering: a model -> the kernel trace a framework launches, and its execution engine."""
from __future__ import annotations

import torch.nn as nn

from kernelfi._utils import KernelfiError
from kernelfi.lowering.build import build_trace
from kernelfi.lowering.engine import Memory, Override, Program
from kernelfi.lowering.fx_frontend import FxLowered, layers_from_module, lower_fx

__all__ = ["lower", "check_eval", "Program", "Memory", "Override", "build_trace", "layers_from_module", "lower_fx", "FxLowered"]


def lower(module: nn.Module, input_shape: tuple[int, ...], name: str = "model",
          append_softmax: bool = True) -> Program:
    """Lower a model to an executable kernel program.

    Darknet networks (built from a .cfg) carry their layers in ``kernelfi_layers`` and are
    lowered as Darknet runs them; anything else goes through torch.fx, and a module in training
    mode is refused: its BatchNorm would use batch statistics and its Dropout drop, so the
    lowering (inference semantics) would silently differ from its forward.
    """
    layers = getattr(module, "kernelfi_layers", None)
    if layers is not None:
        state = {k: v.detach() for k, v in module.state_dict().items()}
    else:
        if not isinstance(module, nn.Module):
            raise KernelfiError(f"{name}: not a torch.nn.Module")
        check_eval(module, name)
        layers, state = layers_from_module(module, input_shape)
    trace, weights = build_trace(name, tuple(layers), state, input_shape, append_softmax)
    return Program(trace, weights)


def check_eval(module: nn.Module, name: str = "model") -> None:
    """One line refusing a module (or a submodule) in training mode: kernelfi lowers inference."""
    if isinstance(module, nn.Module):
        training = [n or type(module).__name__ for n, m in module.named_modules() if m.training]
        if training:
            raise KernelfiError(f"{name}: the module is in training mode ({', '.join(training[:3])}"
                                f"{' ...' if len(training) > 3 else ''}): call .eval() on it first")
