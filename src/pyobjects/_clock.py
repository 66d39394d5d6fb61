"""Time as the runtime sees it: a Clock protocol and the real SystemClock.

Everything time-based in a Runtime (idle eviction, the
``block_concurrency_while`` timeout, alarms) reads the runtime's clock, so a
test can swap in :class:`pyobjects.testing.ManualClock` and be exact.
Times are integer epoch milliseconds, like ``Date.now()`` in Workers.
"""

from __future__ import annotations

import time
from typing import Protocol, final, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What a Runtime needs from a clock."""

    def now_ms(self) -> int:
        """Return the current time in epoch milliseconds."""
        ...

    async def sleep_until(self, deadline_ms: int, /) -> None:
        """Return once :meth:`now_ms` has reached *deadline_ms*."""
        ...


@final
class SystemClock:
    """The real wall clock (``time.time()``), sleeping with anyio."""

    def now_ms(self) -> int:
        """Return the wall-clock time in epoch milliseconds."""
        return time.time_ns() // 1_000_000

    async def sleep_until(self, deadline_ms: int, /) -> None:
        """Sleep until the wall clock reaches *deadline_ms*."""
        await anyio.sleep(max(0.0, (deadline_ms - self.now_ms()) / 1000))
