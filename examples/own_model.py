"""A fault-injection campaign on your own PyTorch model, from the model to the report.

    python examples/own_model.py [WORKDIR]

The model is a small CNN defined here (any ``nn.Module`` in eval mode works the same way, with
the weights it holds); its inputs are a tensor. The script lowers it, checks the lowering,
runs an IOV campaign (resumable: run the script again), prints the summary, plans hardening
within a 10% budget, exports the hardened model as plain PyTorch and writes the HTML report.
tests/test_api.py runs it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import kernelfi


class SmallNet(nn.Module):
    """conv-BN-ReLU, max pool, conv-ReLU, linear: 10 classes of 1x12x12 images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def main(work: Path) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()                     # your trained model: its weights are the ones injected into
    x = torch.randn(8, 1, 12, 12)               # model-ready inputs (or a Dataset, a DataLoader, a path)

    model = kernelfi.Model(net, input_shape=(1, 12, 12))
    print(f"{model.name}: lowered within {model.lowering_error(x):.1e} of its forward (relative)")
    campaign = kernelfi.Campaign(model, x, work / "own.db", mode="iov", n=120, seed=1)
    result = campaign.run()
    print(f"campaign {result.id}: {result.n_done} injections, {result.counts}")
    for s in kernelfi.summary(work / "own.db"):
        print(f"  {s['model']} {s['mode']}: weights {s['weights']['source']}, data {s['data']['source']}")
    plan = kernelfi.harden_plan(work / "own.db", budget="10%", out=work / "plan.json")
    print(f"plan: {len(plan.protect)} protections, {', '.join(p.technique + ' ' + p.name for p in plan.protect)}")
    exported = kernelfi.export(model, plan, work / "hardened", check_inputs=x)
    print(f"exported to {exported.directory}: the plan variant matches the original bit for bit: "
          f"{exported.manifest['check']['plan']['bitwise']}")
    from kernelfi.report import build_report
    print(f"report: {build_report(work / 'own.db', work / 'report')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("own-model-run"))
