"""The CI share of the soak (bench/soak.py --quick): 6,000 injections on the digits models, every
mode, and not one fault the tool fails on; and the soak does count one when there is."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kernelfi.execution import Runner
from kernelfi.types import OUTCOMES

_spec = importlib.util.spec_from_file_location("soak", Path(__file__).resolve().parents[1] / "bench" / "soak.py")
assert _spec is not None and _spec.loader is not None
soak = importlib.util.module_from_spec(_spec)
sys.modules["soak"] = soak  # dataclasses look their module up
_spec.loader.exec_module(soak)


def test_quick_soak_has_no_tool_error() -> None:
    out = soak.soak(list(soak.QUICK), workers=1, say=lambda _: None)
    assert [(l.model, l.mode) for l in out.lines] == [(m, mode) for m in ("digits-alexnet", "digits-resnet")
                                                       for mode in soak.MODES]
    for line in out.lines:
        assert line.injections == 1000 and sum(line.outcomes.values()) == 1000, line
        assert set(line.outcomes) == set(OUTCOMES)
    assert out.tool_errors == 0 and out.batch_failures == 0 and out.ok, [l.errors for l in out.lines]
    assert out.injections == 6000


def test_the_soak_counts_a_tool_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Runner.run

    def run(self, batch):  # type: ignore[no-untyped-def]
        if any(pf.id == 3 for pf in batch):
            raise RuntimeError("simulated")
        return real(self, batch)
    monkeypatch.setattr(Runner, "run", run)
    out = soak.soak(["digits-alexnet=20x2"], modes=("iov",), workers=1, say=lambda _: None)
    assert out.tool_errors == 2 and not out.ok  # injection 3 of each of the two seeds
    assert out.lines[0].errors[0].startswith("RuntimeError: simulated (kernelfi replay --db ")
    assert sum(out.lines[0].outcomes.values()) == 38


def test_the_soak_runs_fuzzed_models(tmp_path: Path) -> None:
    """bench/soak.py --fuzz: two CNNs drawn from the fuzzer's vocabulary (tests/zoo/fuzz_nets.py),
    written as model files with seeded weights, every mode, and no tool error nor refusal."""
    specs, weights = soak.fuzzed(2, 20, 1, tmp_path)
    assert len(specs) == 2 and all(s.endswith(":build=20") and "fuzz_" in s for s in specs)
    assert specs == soak.fuzzed(2, 20, 1, tmp_path)[0]  # the same seed draws the same networks
    out = soak.soak(specs, workers=1, say=lambda _: None, weights=weights)
    assert len(out.lines) == 6 and not any(l.refused for l in out.lines), [l.refused for l in out.lines]
    assert out.ok and out.injections == 120, [l.errors for l in out.lines]
