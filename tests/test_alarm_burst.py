"""A burst of alarms falling due at once does not stall the event loop (#11).

The runtime's timer task used to run every due callback in one step, so
3,000 alarms started in one event-loop turn and, on SQLite, each opened a
database and committed before anything else could run (a request waited
12-16 s). These tests count, deterministically, how many alarms start while
another task waits for one turn; benchmarks/alarm_burst.py measures the
wall-clock stall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from pyobjects import DurableObject
from pyobjects._core._timers import CALLBACKS_PER_TURN
from pyobjects.storage import SQLiteBackend

if TYPE_CHECKING:
    from pathlib import Path

    from pyobjects.storage import StorageBackend
    from pyobjects.testing import MakeRuntime, ManualClock

OBJECTS = 200


class Client(DurableObject):
    started = 0
    first: anyio.Event = anyio.Event()

    async def hello(self, at: int) -> None:
        self.ctx.storage.put("seen", True)
        self.ctx.storage.set_alarm(at)

    async def alarm(self, info: Any) -> None:
        type(self).started += 1
        type(self).first.set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Client.started = 0
    Client.first = anyio.Event()


async def most_alarms_per_turn(
    make_runtime: MakeRuntime, clock: ManualClock, storage: StorageBackend
) -> int:
    rt = await make_runtime({"C": Client}, storage=storage)
    at = clock.now_ms() + 1_000
    async with anyio.create_task_group() as tg:
        for i in range(OBJECTS):
            tg.start_soon(rt.env.C.get_by_name(f"c{i}").hello, at)
    most = 0

    async def other_task() -> None:
        # One step per event-loop turn, as a request's steps would be.
        nonlocal most
        await Client.first.wait()  # blocked until the alarms start
        seen = 0  # those of the turn that set the event count too
        while Client.started < OBJECTS:
            await anyio.lowlevel.checkpoint()
            most = max(most, Client.started - seen)
            seen = Client.started

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        await clock.advance(1_000)
    assert Client.started == OBJECTS  # all of them ran, at their time
    assert clock.now_ms() == at
    return most


async def test_due_alarms_start_a_few_per_turn(
    make_runtime: MakeRuntime, manual_clock: ManualClock, memory_backend: Any
) -> None:
    most = await most_alarms_per_turn(make_runtime, manual_clock, memory_backend)
    # Before the fix all 200 started in one turn.
    assert 0 < most <= 3 * CALLBACKS_PER_TURN <= 48


async def test_due_alarms_start_a_few_per_turn_on_sqlite(
    make_runtime: MakeRuntime, manual_clock: ManualClock, tmp_path: Path
) -> None:
    backend = SQLiteBackend(tmp_path, max_open_connections=64)
    most = await most_alarms_per_turn(make_runtime, manual_clock, backend)
    assert 0 < most <= 3 * CALLBACKS_PER_TURN <= 48
