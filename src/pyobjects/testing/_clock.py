"""``ManualClock``: virtual time for exact, sleep-free tests."""

from __future__ import annotations

import heapq
import itertools
import sys
from typing import Any, cast, final

import anyio
import anyio.lowlevel

from pyobjects._inflight import operations

__all__ = ["ManualClock"]

# 2026-01-01T00:00:00Z: a fixed, recognisable start.
DEFAULT_START_MS = 1_767_225_600_000


async def settle() -> None:
    """Return once every other task is blocked and no storage round trip is open.

    A task waiting for a database answer (PostgresBackend) looks blocked but
    is not done: while such operations are under way (they count themselves
    in ``pyobjects._inflight``), this waits for them in steps of 1 ms of real
    time, for at most about a minute.
    """
    for _ in range(60_000):
        await _all_blocked()
        if not operations.count:
            return
        await anyio.sleep(0.001)


async def _all_blocked() -> None:
    """Return once every other task is blocked (nothing can run any more).

    On trio this is ``wait_all_tasks_blocked()``. On asyncio, anyio's version
    sleeps 100 ms of real time whenever some task is still runnable, which
    would make a test with many timers take minutes; this one yields once
    per check instead (the same test of asyncio's private ``_fut_waiter``).
    """
    asyncio: Any = sys.modules.get("asyncio")
    if asyncio is None or asyncio._get_running_loop() is None:
        await anyio.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    spins = 0
    while True:
        await anyio.lowlevel.checkpoint()
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = task._fut_waiter
            if waiter is None or waiter.done():
                break
        else:
            return
        spins += 1
        if spins > 10_000:  # something busy-loops: stop burning the CPU
            await anyio.sleep(0.001)


class _Sleeper:
    __slots__ = ("deadline_ms", "event", "seq")

    def __init__(self, deadline_ms: int, seq: int) -> None:
        self.deadline_ms = deadline_ms
        self.seq = seq
        self.event = anyio.Event()

    def __lt__(self, other: _Sleeper) -> bool:
        return (self.deadline_ms, self.seq) < (other.deadline_ms, other.seq)


@final
class ManualClock:
    """A clock that only moves when the test says so.

    Pass it as ``Runtime(clock=...)``. ``await clock.advance(ms)`` moves time
    forward deadline by deadline, waking what sleeps on the runtime's clock
    (timeouts, eviction, alarms) in time order and letting each wave of
    work finish (``anyio.wait_all_tasks_blocked()``) before moving on. Works
    on asyncio and trio.
    """

    # Tells the runtime that time is exact, so alarm retries get no jitter.
    deterministic = True

    def __init__(self, *, start_ms: int = DEFAULT_START_MS) -> None:
        if (
            not isinstance(cast("object", start_ms), int)
            or isinstance(start_ms, bool)
            or start_ms < 0
        ):
            raise TypeError(f"start_ms must be a non-negative int, got {start_ms!r}")
        self._now = start_ms
        self._sleepers: list[_Sleeper] = []
        self._counter = itertools.count()

    def now_ms(self) -> int:
        """Return the virtual time in epoch milliseconds."""
        return self._now

    async def sleep_until(self, deadline_ms: int, /) -> None:
        """Sleep until :meth:`advance` reaches *deadline_ms*."""
        if deadline_ms <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(deadline_ms, next(self._counter))
        heapq.heappush(self._sleepers, sleeper)
        await sleeper.event.wait()

    async def advance(self, ms: float) -> None:
        """Move time forward by *ms* milliseconds, running what falls due.

        Returns once everything woken in that span has settled.

        Raises:
            ValueError: If *ms* is negative.
        """
        if not isinstance(cast("object", ms), (int, float)) or isinstance(ms, bool):
            raise TypeError(f"advance() takes milliseconds as a number, not {ms!r}")
        if ms < 0:
            raise ValueError(f"advance() cannot move time backwards (got {ms} ms)")
        target = self._now + round(ms)
        sleepers = self._sleepers
        await settle()
        while sleepers and sleepers[0].deadline_ms <= target:
            self._now = max(self._now, sleepers[0].deadline_ms)
            while sleepers and sleepers[0].deadline_ms <= self._now:
                heapq.heappop(sleepers).event.set()
            await settle()
        self._now = target
        await settle()

    def __repr__(self) -> str:
        return f"<ManualClock now_ms={self._now}>"
