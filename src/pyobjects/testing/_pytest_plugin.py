"""pytest plugin, loaded through the ``pytest11`` entry point on install.

Fixtures give each test its own manual clock, a fresh in-memory storage and
runtimes built on both, closed when the test ends, so tests are isolated and
need no real sleeps. The async fixture runs under anyio's pytest plugin
(``anyio_mode = "auto"``, or mark the test ``@pytest.mark.anyio``).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import pytest

from pyobjects._core._runtime import Runtime
from pyobjects.storage.memory import MemoryBackend
from pyobjects.testing._clock import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from pyobjects._core._object import DurableObject
    from pyobjects.testing._harness import MakeRuntime


@pytest.fixture
def manual_clock() -> ManualClock:
    """A fresh :class:`ManualClock` for one test."""
    return ManualClock()


@pytest.fixture
def memory_backend() -> MemoryBackend:
    """A fresh, empty :class:`MemoryBackend` for one test."""
    return MemoryBackend()


@pytest.fixture
async def make_runtime(
    manual_clock: ManualClock, memory_backend: MemoryBackend
) -> AsyncIterator[MakeRuntime]:
    """Build running runtimes on the test's clock and storage.

    ``rt = await make_runtime({"COUNTER": Counter})`` returns a runtime that
    is already entered and is closed when the test ends. Keyword arguments go
    to :class:`~pyobjects.Runtime`; ``clock`` and ``storage`` default to the
    ``manual_clock`` and ``memory_backend`` fixtures.
    """
    async with AsyncExitStack() as stack:

        async def make(
            bindings: Mapping[str, type[DurableObject]], **options: Any
        ) -> Runtime:
            options.setdefault("clock", manual_clock)
            options.setdefault("storage", memory_backend)
            return await stack.enter_async_context(
                Runtime(bindings=bindings, **options)
            )

        yield make
