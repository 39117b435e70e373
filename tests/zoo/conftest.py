"""The zoo's tests import their neighbours (``zoo``, ``nets_classic``...) by name, and the
``slow`` variants (300 injections per mode, the larger fuzz) run only when asked for with
``-m slow``: the suite's command (``python -m pytest -n 2``) selects no marker, and these add
minutes, not seconds."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords and Path(str(item.fspath)).parent == Path(__file__).resolve().parent:
            item.add_marker(skip)
