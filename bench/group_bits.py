"""Every buffer of a fast lowered run, dumped for a before/after bitwise comparison, and the
lowered forward's wall time (issue 20: grouped convolutions as one F.conv2d(groups=G)).

    PYTHONPATH=<tree>/src python bench/group_bits.py dump OUT.pt
    python bench/group_bits.py compare BEFORE.pt AFTER.pt
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "zoo"))


def programs():  # (name, program, input_shape)
    from kernelfi.lowering import lower
    from kernelfi.models import load_model
    from zoo import ZOO, CLASSES, seeded
    for e in ZOO:
        if e.key in ("mobilenet-v2", "efficientnet-b0"):
            yield e.key, lower(seeded(e.build(CLASSES), e.input_shape), e.input_shape, e.key), e.input_shape
    for name in ("digits-alexnet", "digits-resnet", "alexnet", "resnet50"):
        lm = load_model(name)
        yield name, lower(lm.module, lm.info.input_shape, name), tuple(lm.info.input_shape)


def dump(out: str) -> None:
    res: dict[str, torch.Tensor] = {}
    for name, prog, shape in programs():
        batches = (2,) if name in ("mobilenet-v2", "efficientnet-b0") else (1, 3)
        for b in batches:
            x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(7))
            t = time.perf_counter()
            with torch.no_grad():
                mem = prog.run(prog.memory(x))
            dt = time.perf_counter() - t
            t = time.perf_counter()
            with torch.no_grad():
                prog.run(prog.memory(x))
            dt2 = time.perf_counter() - t
            print(f"{name} batch {b}: {len(prog.trace.launches)} launches, run {dt:.3f} s (first), {dt2:.3f} s (again)",
                  flush=True)
            for k, v in mem.items():
                res[f"{name}/{b}/{k}"] = v.clone()
    torch.save(res, out)


def compare(a: str, b: str) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x.keys() == y.keys(), sorted(set(x) ^ set(y))[:5]
    bad = [k for k in x if x[k].shape != y[k].shape or x[k].dtype != y[k].dtype
           or not torch.equal(x[k].view(torch.int32) if x[k].dtype == torch.float32 else x[k],
                              y[k].view(torch.int32) if y[k].dtype == torch.float32 else y[k])]
    print(f"{len(x)} buffers, {len(bad)} differ bitwise", bad[:10])


if __name__ == "__main__":
    dump(sys.argv[2]) if sys.argv[1] == "dump" else compare(sys.argv[2], sys.argv[3])
