"""One timer queue per runtime, driven by the runtime's clock.

Idle eviction and the ``block_concurrency_while`` timeout (and later alarms)
are deadlines on this queue: a heap and one sleeping task, never a sleeping
task per object, so a million objects cost a million small heap entries at
most.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyobjects._clock import Clock


logger = logging.getLogger("pyobjects")

# Due callbacks run per event-loop turn at most. A callback often starts
# work (an alarm starts an event, which on SQLite opens a database and
# commits): thousands due at once, run in one turn, would make everything
# else wait for all of them (issue #11: 3,000 alarms stalled a request for
# 12-16 s). Yielding after this many lets other tasks take turns.
CALLBACKS_PER_TURN = 4


class TimerHandle:
    """A scheduled callback; :meth:`cancel` it to drop it."""

    __slots__ = ("_timers", "callback", "cancelled", "deadline_ms", "seq")

    def __init__(
        self, deadline_ms: int, seq: int, callback: Callable[[], None], timers: Timers
    ) -> None:
        self.deadline_ms: int = deadline_ms
        self.seq: int = seq
        self.callback: Callable[[], None] = callback
        self.cancelled: bool = False
        self._timers = timers

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.deadline_ms, self.seq) < (other.deadline_ms, other.seq)

    def cancel(self) -> None:
        """Make sure the callback does not run."""
        if not self.cancelled:
            self.cancelled = True
            self._timers._cancelled_one()


class Timers:
    """A heap of deadlines served by :meth:`run` (one task per runtime)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[TimerHandle] = []
        self._counter = itertools.count()
        self._wake: anyio.Event | None = None
        self._sleep_scope: anyio.CancelScope | None = None
        self._cancelled = 0  # cancelled handles still in the heap

    def __len__(self) -> int:
        """Number of live (not cancelled) deadlines."""
        return len(self._heap) - self._cancelled

    def _cancelled_one(self) -> None:
        # Cancelled handles leave the heap lazily, when they reach the top;
        # an object re-arming a far-away alarm on every call would otherwise
        # grow the heap without bound. Rebuild it once most of it is dead.
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > 1024 and self._cancelled * 2 > len(heap):
            heap[:] = [h for h in heap if not h.cancelled]
            heapq.heapify(heap)
            self._cancelled = 0

    def call_at(self, deadline_ms: int, callback: Callable[[], None]) -> TimerHandle:
        """Run *callback* (synchronously, on the timer task) at *deadline_ms*."""
        handle = TimerHandle(deadline_ms, next(self._counter), callback, self)
        heapq.heappush(self._heap, handle)
        if self._heap[0] is handle:
            # The earliest deadline changed: make the timer task re-plan.
            if self._wake is not None:
                self._wake.set()
            if self._sleep_scope is not None:
                self._sleep_scope.cancel()
        return handle

    async def run(self) -> None:
        """Serve deadlines forever (cancel the task to stop)."""
        heap = self._heap
        ran = 0
        while True:
            while heap and heap[0].cancelled:
                heapq.heappop(heap)
                self._cancelled -= 1
            if not heap:
                self._wake = anyio.Event()
                await self._wake.wait()
                self._wake = None
                continue
            first = heap[0]
            if first.deadline_ms <= self._clock.now_ms():
                heapq.heappop(heap)
                first.cancelled = True  # out of the heap: a late cancel() is a no-op
                try:
                    first.callback()
                except Exception:  # a bug, but it must not stop every timer
                    logger.exception("timer callback %r failed", first.callback)
                ran += 1
                if ran >= CALLBACKS_PER_TURN:
                    ran = 0
                    await anyio.lowlevel.checkpoint()
                continue
            ran = 0
            with anyio.CancelScope() as scope:
                self._sleep_scope = scope
                await self._clock.sleep_until(first.deadline_ms)
            self._sleep_scope = None
