"""MRFI 2.1.0 with ``FloatFixedBitFlip`` at fixed positions, batched.

One ``activation_out`` fault injector per site module (``module_fullname``), selector
``FixPositions`` (flat indices into the module's batched output) and error mode
``FloatFixedBitFlip`` with a per-position bit list, both documented MRFI built-ins. Per batch of
B faults (one per batch element) we rewrite the selector positions and bit lists of the site
modules that hold a fault and disable the others, then run one forward: MRFI's fastest way to
apply B arbitrary fixed faults. MRFI hooks every module of the model (pre- and post-hooks) by
design; that overhead is part of what it costs.
"""
from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from mrfi import MRFI, EasyConfig

from .common import NeuronFault, NeuronSite, categorize, chunks, padded_batch


class MRFIPeer:
    name = "mrfi"

    def __init__(self, module: nn.Module, sites: list[NeuronSite], batch: int) -> None:
        logging.getLogger().setLevel(logging.WARNING)  # MRFI logs every module it matches at INFO
        names = sorted({s.module for s in sites})
        cfg = EasyConfig({"faultinject": [{
            "type": "activation_out",
            "enabled": False,
            "selector": {"method": "FixPositions", "positions": []},
            "error_mode": {"method": "FloatFixedBitFlip", "bit": [], "floattype": "float32"},
            "module_fullname": names,
        }]})
        # MRFI refuses a module instance it already wrapped; give it its own copy
        self.fi = MRFI(copy.deepcopy(module).eval(), cfg)
        modules = dict(self.fi.model.named_modules())
        self.node = {n: modules[n].FI_config.activation_out[0] for n in names}
        self.sites, self.batch = sites, batch

    def run(self, x: torch.Tensor, faults: list[NeuronFault], golden: torch.Tensor) -> tuple[list[str], float]:
        cats: list[str] = []
        t0 = time.perf_counter()
        for part in chunks(faults, self.batch):
            per: dict[str, tuple[list[int], list[int]]] = {}
            for j, f in enumerate(part):
                s = self.sites[f.site]
                pos, bits = per.setdefault(s.module, ([], []))
                pos.append(j * s.numel + f.flat)
                bits.append(f.bit)
            for name, node in self.node.items():
                if name in per:
                    node["enabled"] = True
                    node.selector.args["positions"] = per[name][0]
                    node.error_mode.args["bit"] = per[name][1]
                else:
                    node["enabled"] = False
            probs = torch.softmax(self.fi(padded_batch(x, [f.input for f in part], self.batch)), dim=1)
            cats += categorize(golden[[f.input for f in part]], probs[:len(part)])
        return cats, time.perf_counter() - t0
