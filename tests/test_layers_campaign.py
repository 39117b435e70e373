"""A short campaign per mode on a model with every issue-20 layer finishes with no tool error
(each new kernel is struck: its launches are in the plan's population)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.lowering import lower
from kernelfi.models import register_model
from kernelfi.store import Store

NAME = "issue20-all-layers"
NEW_KERNELS = {"scale_channels", "binary_op", "forward_local_avgpool", "upsample"}


class AllLayers(nn.Module):
    """Every layer issue 20 adds, in a 3x12x12 -> n classifier."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.SiLU())
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, (1, 3), padding=(0, 1), groups=8)
        self.pw = nn.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0))
        self.se1, self.se2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.mp = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(16, 8)
        self.drop = nn.Dropout2d(0.2)
        self.head = nn.Linear(8, n)
        self.id = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(F.relu6(self.stem(x)))                                     # BN after an activation
        y = F.hardswish(self.dw(y))
        y = self.pw(y)                                                           # 6x12 after stride (2, 1)
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        y = self.id(y * s)                                                       # SE: scale_channels
        a = self.pool(y)                                                         # 3x6 local avg (padded)
        b = self.mp(F.gelu(y))                                                   # 3x6 ceil-mode max
        z = torch.tanh(a - b) * a.mean((2, 3), keepdim=True) + F.leaky_relu(b, 0.2)
        u = self.up(z)                                                           # 6x12 nearest
        m = torch.cat([u.mean((2, 3)), torch.sigmoid(y).mean((2, 3))], 1)        # 16 flat
        return self.head(self.drop(F.relu(self.fc(m))))


def build_all_layers(num_classes: int) -> AllLayers:
    """The registered builder: top level, so worker processes can import it (kernelfi.models.user)."""
    return AllLayers(num_classes)


@pytest.fixture(scope="module")
def registered() -> str:
    from kernelfi.models import list_models
    if NAME not in {m.name for m in list_models()}:
        register_model(NAME, input_shape=(3, 12, 12), num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3,
                       description="issue 20: every new layer")(build_all_layers)
    return NAME


def test_the_model_lowers_exactly_and_launches_every_new_kernel() -> None:
    torch.manual_seed(0)
    m = AllLayers().eval()
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
    prog = lower(m, (3, 12, 12))
    assert NEW_KERNELS <= {l.kernel for l in prog.trace.launches}
    acts = {l.params["activation"] for l in prog.trace.launches if l.kernel == "activate_array"}
    assert {"swish", "relu6", "hardswish", "hardsigmoid", "gelu", "tanh", "leaky", "logistic"} <= acts
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        ref = m(x)
    assert (prog.forward(x)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_short_campaign_has_no_tool_error(registered: str, mode: str, tmp_path: Path) -> None:
    db = tmp_path / f"{mode}.db"
    cid = run_campaign(CampaignConfig(ModelSpec(registered), mode, "single", n=30, seed=11, data="random", inputs=4), str(db))
    with Store(str(db), create=False, readonly=True) as store:
        counts = store.outcome_counts(cid)
    assert sum(counts.values()) == 30
    assert counts.get("tool_error", 0) == 0, counts
