"""pytest plugin (loaded through the ``pytest11`` entry point).

Gives each test its own manual clock and in-memory storage, so a runtime built
from them is isolated and needs no real sleeps.
"""

from __future__ import annotations

import pytest

from pyobjects.storage.memory import MemoryBackend

from ._clock import ManualClock


@pytest.fixture
def manual_clock() -> ManualClock:
    """A fresh :class:`ManualClock` for one test."""
    return ManualClock()


@pytest.fixture
def memory_backend() -> MemoryBackend:
    """A fresh, empty :class:`MemoryBackend` for one test."""
    return MemoryBackend()
