"""A module fixture running a test module's torch ops on one intra-op thread: the machine is
shared, and one thread is much faster here. Import ``one_thread`` into a test module to use it."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module's tests, restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
