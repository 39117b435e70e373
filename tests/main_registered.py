"""A user's script that registers its model inside ``main()`` and runs a campaign whose batches
all go to two spawned workers (tests/test_model_file.py runs it in a subprocess).

    python tests/main_registered.py DB DATA.npz [nested]

``nested``: register a builder defined inside ``main()`` instead, which no other process can
find (refused in one line).
"""
from __future__ import annotations

import sys

from torch import nn

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.campaign.pool import execute_local
from kernelfi.models import register_model

try:
    from tests.hand_net import Hand
except ImportError:  # run as a script from anywhere: its own directory is on sys.path
    from hand_net import Hand  # type: ignore[no-redef]


def build(num_classes: int) -> nn.Module:
    """The builder: the hand-weighted model with its own weights (kept, not replaced)."""
    return Hand(num_classes)


def main(db: str, data: str, nested: bool = False) -> None:
    reg = register_model("hand-main", input_shape=(1, 2, 2), num_classes=2, mean=(0.0,), std=(1.0,),
                         description="registered in main()")
    if nested:
        reg(lambda num_classes: Hand(num_classes))
    else:
        reg(build)
    cfg = CampaignConfig(ModelSpec("hand-main"), "iov", "single", 40, seed=2, data=data, batch=10, workers=2)
    run_campaign(cfg, db, execute=lambda prep, work: execute_local(prep, work, 2, driver=False))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], len(sys.argv) > 3)
