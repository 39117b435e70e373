"""A hand-weighted Darknet network whose faulty outputs can be worked out on paper.

    input 1x4x4: x[r][c] = 4r + c + 1          (1 .. 16)
    layer 0 conv 1 filter 3x3 pad 1, centre weight 1, bias 0.5, linear -> x + 0.5
    layer 1 maxpool 2 s2                        -> [6.5, 8.5, 14.5, 16.5]
    layer 2 connected 2: W = [[1,0,0,0],[0,0,0,0]], b = [0, 6] -> logits [6.5, 6]
    layer 3 softmax                             -> top-1 = class 0
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from kernelfi.execution.golden import Golden
from kernelfi.campaign.planner import PlannedFault
from kernelfi.execution.runner import Runner
from kernelfi.faults.registers import rf_registers
from kernelfi.lowering import Program, lower
from kernelfi.models.darknet import DarknetNet, build_layers, parse_cfg_text
from kernelfi.types import Fault, Launch, Result, Site

CFG = """
[net]
width=4
height=4
channels=1

[convolutional]
filters=1
size=3
stride=1
pad=1
activation=linear

[maxpool]
size=2
stride=2

[connected]
output=2
activation=linear

[softmax]
"""


def tiny_program() -> Program:
    layers, shape = build_layers(parse_cfg_text(CFG))
    w = torch.zeros(1, 9)
    w[0, 4] = 1.0
    fc = torch.zeros(2, 4)
    fc[0, 0] = 1.0
    state = {"layers.0.weights": w, "layers.0.biases": torch.tensor([0.5]),
             "layers.2.weights": fc, "layers.2.biases": torch.tensor([0.0, 6.0])}
    net = DarknetNet(layers, state, shape)
    return lower(net, shape, "tiny")


def tiny_input() -> torch.Tensor:
    return torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4)


def launch(program: Program, name: str) -> Launch:
    return next(l for l in program.trace.launches if l.name == name)


def site(program: Program, launch_name: str, tag: str, thread: int, exec_: int = 0, calls: int | None = None) -> Site:
    """The site of execution ``exec_`` of ``tag`` in ``thread`` (``calls``: executions per thread)."""
    l = launch(program, launch_name)
    slot = next(i for i, s in enumerate(l.template.slots) if s.tag == tag)
    per = l.template.slots[slot].count // (calls or 1)
    return Site(l.index, l.template.slots[slot].group, thread, slot, exec_ * per)


def rf_site(program: Program, launch_name: str, role: str, thread: int) -> Site:
    """An RF site on the first register of ``role``, at a time inside its live interval."""
    regs = rf_registers(launch(program, launch_name)).registers
    return rf_site_of(program, launch_name, next(i for i, reg in enumerate(regs) if reg.role == role), thread)


def rf_site_of(program: Program, launch_name: str, r: int, thread: int) -> Site:
    """An RF site on register ``r`` of the launch's map, at a time inside its live interval."""
    l = launch(program, launch_name)
    regs = rf_registers(l).registers
    lo, hi = regs[r].live
    total = sum(s.count for s in l.template.slots)
    pos = int((lo + (hi - lo) * 0.01) * total) + 1
    acc = 0
    for i, s in enumerate(l.template.slots):
        if acc + s.count > pos:
            return Site(l.index, s.group, thread, i, pos - acc, register=r)
        acc += s.count
    raise AssertionError("no slot at that time")


def run_faults(program: Program, faults: list[Fault], x: torch.Tensor | None = None) -> list[Result]:
    x = tiny_input() if x is None else x
    golden = Golden.compute(program, x)
    runner = Runner(program, golden)
    out = []
    for i, f in enumerate(faults):
        out.extend(e.result for e in runner.run([PlannedFault(i, f, 1.0)]))
    return out


def run_full(program: Program, faults: list[Fault]) -> list[dict]:
    """Like run_faults but also returns the faulty lane's final probabilities (for paper checks)."""
    x = tiny_input()
    golden = Golden.compute(program, x)
    res = []
    for f in faults:
        runner = Runner(program, golden, keep_outputs=True)
        ex = runner.run([PlannedFault(0, f, 1.0)])[0]
        res.append({"result": ex.result, "probs": runner.last_outputs.get(0)})
    return res


def campaign_rows(config, db: Path) -> list[str]:
    """Run ``config`` into ``db``; its injection rows as text, timings zeroed: campaigns that
    must agree bit for bit (fast and plain paths, chunked or not) compare these."""
    from kernelfi.campaign import run_campaign
    from kernelfi.store import Store

    cid = run_campaign(config, str(db))
    with Store(db) as s:
        return [repr(dataclasses.replace(s.injection(cid, i), seconds=0.0)) for i in range(config.n)]


def run_one(program: Program, fault: Fault, x: torch.Tensor) -> tuple[Result, torch.Tensor]:
    """One fault on input ``x``: its result and the faulty lane's final probabilities."""
    runner = Runner(program, Golden.compute(program, x), keep_outputs=True)
    ex = runner.run([PlannedFault(0, fault, 1.0)])[0]
    return ex.result, runner.last_outputs.get(0)


def probs_of(logits: list[float]) -> torch.Tensor:
    """Softmax of logits worked out on paper, in float64 then float32."""
    return torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).float()


def whole_weights(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``net`` in eval mode with weights and biases drawn from {-2..2} (seeded): on small inputs
    every sum is exact in float32, so every path (grouped call, per-group calls, per-thread
    replay) gives the same bits whatever order it sums in."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randint(-2, 3, m.weight.shape, generator=g).float())
                m.bias.copy_(torch.randint(-2, 3, m.bias.shape, generator=g).float())
    return net.eval()
