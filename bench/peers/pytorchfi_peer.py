"""PyTorchFI 0.6.0 with an IEEE-754 float32 single-bit flip, in its batched neuron mode.

PyTorchFI ships only a *quantised* bit flip (``single_bit_flip_func._flip_bit_signed``), so
this is the documented extension route: a ``fault_injection`` subclass whose custom injection
function (``declare_neuron_fi(function=...)``) flips one raw bit of the selected
``output[batch][dim1][dim2][dim3]`` and advances PyTorchFI's layer counter exactly as the
shipped ``single_bit_flip_signed_across_batch`` does.

Fastest mode: one fault per batch element, one forward per batch of B. ``declare_neuron_fi``
deep-copies the model on every call; we pay that once (``arm``) and then only retarget the
fault lists per batch (``retarget``: PyTorchFI's own bounds check included), so PyTorchFI is
measured at the cost of its hooks and the forward pass alone.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from pytorchfi.core import fault_injection

from .common import NeuronFault, NeuronSite, categorize, chunks, execution_order, flip_bits_, padded_batch


class FP32NeuronFI(fault_injection):
    """PyTorchFI neuron injector whose value is the float32 bit flip of the golden value."""

    def __init__(self, model: nn.Module, batch_size: int, input_shape: list[int], layer_types: list[type]) -> None:
        super().__init__(model, batch_size, input_shape=input_shape, layer_types=layer_types, use_cuda=False)
        self.corrupt_bit: list[int] = []

    # -- the custom injection function (a forward hook on every layer of layer_types) -----------
    def fp32_flip(self, module: nn.Module, input_val, output: torch.Tensor) -> None:
        cur = self.get_current_layer()
        inj = [i for i, layer in enumerate(self.corrupt_layer) if layer == cur]
        if inj:
            dim = self.get_layer_dim(cur)
            per = output[0].numel()
            flat = []
            for i in inj:
                b, c = self.corrupt_batch[i], self.corrupt_dim1[i]
                if dim == 2:
                    f = c
                elif dim == 3:
                    f = c * output.shape[2] + self.corrupt_dim2[i]
                else:
                    f = (c * output.shape[2] + self.corrupt_dim2[i]) * output.shape[3] + self.corrupt_dim3[i]
                flat.append(b * per + f)
            flip_bits_(output, torch.tensor(flat, dtype=torch.long),
                       torch.tensor([self.corrupt_bit[i] for i in inj], dtype=torch.int32))
        self.updateLayer()
        if self.get_current_layer() >= self.get_total_layers():
            self.reset_current_layer()

    # -- declare once, retarget per batch -------------------------------------------------------
    def arm(self) -> nn.Module:
        """``declare_neuron_fi`` with the custom function and no fault yet (deep copy + hooks)."""
        return self.declare_neuron_fi(batch=[], layer_num=[], dim1=[], dim2=[], dim3=[], function=self.fp32_flip)

    def retarget(self, batch: list[int], layer: list[int], dim1: list[int], dim2: list, dim3: list,
                 bits: list[int]) -> None:
        self.corrupt_batch, self.corrupt_layer = list(batch), list(layer)
        self.corrupt_dim1, self.corrupt_dim2, self.corrupt_dim3 = list(dim1), list(dim2), list(dim3)
        self.corrupt_bit = list(bits)
        self.check_bounds(self.corrupt_batch, self.corrupt_layer, self.corrupt_dim1, self.corrupt_dim2,
                          self.corrupt_dim3)
        self.reset_current_layer()


class PyTorchFIPeer:
    name = "pytorchfi"

    def __init__(self, module: nn.Module, sites: list[NeuronSite], input_shape: tuple[int, ...], batch: int,
                 x1: torch.Tensor) -> None:
        bn = any(s.batch_norm for s in sites)
        types = [nn.BatchNorm2d, nn.Linear] if bn else [nn.Conv2d, nn.Linear]
        self.batch = batch
        self.pfi = FP32NeuronFI(module, batch, list(input_shape), types)
        order = execution_order(module, x1, tuple(types))
        if len(order) != self.pfi.get_total_layers():
            raise RuntimeError(f"pytorchfi counts {self.pfi.get_total_layers()} layers, hooks saw {len(order)}")
        self.layer_num = {name: i for i, name in enumerate(order)}
        self.sites = sites
        for s in sites:
            if list(self.pfi.get_layer_shape(self.layer_num[s.module]))[1:] != list(s.shape):
                raise RuntimeError(f"{s.module}: pytorchfi shape {self.pfi.get_layer_shape(self.layer_num[s.module])} "
                                   f"!= kernelfi {s.shape}")
        self.model = self.pfi.arm()

    def run(self, x: torch.Tensor, faults: list[NeuronFault], golden: torch.Tensor) -> tuple[list[str], float]:
        """Categories of ``faults`` (in order) and the seconds they took."""
        cats: list[str] = []
        t0 = time.perf_counter()
        with torch.no_grad():
            for part in chunks(faults, self.batch):
                b, layer, d1, d2, d3, bits = [], [], [], [], [], []
                for j, f in enumerate(part):
                    s = self.sites[f.site]
                    e = f.element
                    b.append(j)
                    layer.append(self.layer_num[s.module])
                    d1.append(e[0])
                    d2.append(e[1] if len(e) > 1 else None)
                    d3.append(e[2] if len(e) > 2 else None)
                    bits.append(f.bit)
                self.pfi.retarget(b, layer, d1, d2, d3, bits)
                probs = torch.softmax(self.model(padded_batch(x, [f.input for f in part], self.batch)), dim=1)
                cats += categorize(golden[[f.input for f in part]], probs[:len(part)])
        return cats, time.perf_counter() - t0
