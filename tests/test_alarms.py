"""Alarms (reference §7), tested with the pyobjects.testing helpers."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import pyobjects
from pyobjects import (
    AlarmInfo,
    DurableObject,
    DurableObjectResetError,
    Runtime,
    RuntimeClosedError,
)
from pyobjects.storage import SQLiteBackend, StorageBackend, Transaction
from pyobjects.storage._base import MAX_ALARM_MS
from pyobjects.testing import (
    MakeRuntime,
    ManualClock,
    crash_and_restart,
    evict,
    fail_next_commits,
    run_durable_object_alarm,
    run_in_durable_object,
)

from .postgres import settle

if TYPE_CHECKING:
    from pathlib import Path


class Reminder(DurableObject):
    """Records every alarm run; behaviour is steered through storage."""

    runs: list[tuple[str | None, AlarmInfo, int, Any]] = []  # noqa: RUF012

    async def alarm(self, info: AlarmInfo) -> None:
        seen = await self.ctx.storage.get_alarm()
        type(self).runs.append((self.ctx.id.name, info, self.ctx.now_ms(), seen))
        mode = await self.ctx.storage.get("mode")
        if mode == "fail":
            raise RuntimeError("alarm failed")
        if mode == "again":
            self.ctx.storage.put("mode", None)
            self.ctx.storage.set_alarm(self.ctx.now_ms() + 1_000)
        if mode == "set-then-fail":
            self.ctx.storage.put("mode", None)
            self.ctx.storage.set_alarm(self.ctx.now_ms() + 500)
            raise RuntimeError("failed after setting a new alarm")
        if mode == "hang":
            await anyio.sleep_forever()
        if mode == "abort":
            self.ctx.abort("aborted in alarm")
        if mode == "abort-no-retry":
            self.ctx.abort("aborted for good", retry_alarm=False)

    async def schedule(self, when: Any, mode: Any = None) -> None:
        self.ctx.storage.put("mode", mode)
        self.ctx.storage.set_alarm(when)

    async def get_alarm(self) -> int | None:
        return await self.ctx.storage.get_alarm()

    async def set_mode(self, mode: Any) -> None:
        self.ctx.storage.put("mode", mode)

    async def cancel(self) -> None:
        await self.ctx.storage.delete_alarm()

    async def wipe(self) -> None:
        await self.ctx.storage.delete_all()


class NoAlarm(DurableObject):
    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        # Allowed in the constructor, as in Cloudflare (not checked there).
        ctx.storage.set_alarm(ctx.now_ms() + 1_000)

    async def try_set(self) -> None:
        self.ctx.storage.set_alarm(self.ctx.now_ms() + 1_000)

    async def get(self) -> int | None:
        return await self.ctx.storage.get_alarm()


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    Reminder.runs = []


async def test_set_get_delete_and_replace(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    now = manual_clock.now_ms()
    assert await stub.get_alarm() is None
    await stub.schedule(now + 5_000)
    assert await stub.get_alarm() == now + 5_000
    await stub.schedule(now + 9_000)  # one alarm per object: replaced
    assert await stub.get_alarm() == now + 9_000
    when = dt.datetime.fromtimestamp((now + 7_000) / 1000, tz=dt.UTC)
    await stub.schedule(when)
    assert await stub.get_alarm() == now + 7_000
    await stub.schedule(now - 60_000)  # the past is clamped to now
    assert await stub.get_alarm() == now
    await stub.cancel()
    assert await stub.get_alarm() is None
    await manual_clock.advance(60_000)
    assert Reminder.runs == []


@pytest.mark.parametrize(
    ("when", "match"),
    [
        (0, "<= 0"),
        (-5, "<= 0"),
        ("soon", "epoch milliseconds"),
        (True, "epoch milliseconds"),
        (float("nan"), "finite"),
        (dt.datetime(2030, 1, 1), "timezone-aware"),
    ],
)
async def test_bad_alarm_times_raise_type_error(
    make_runtime: MakeRuntime, when: Any, match: str
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    with pytest.raises(TypeError, match=match):
        await stub.schedule(when)
    assert await stub.get_alarm() is None


OUT_OF_RANGE = [
    2**63,
    2**64 + 1,
    10**5000,
    1e300,
    float("inf"),
    float("-inf"),
    float("nan"),
    -0.0,
    -1.5,
    -(2**63) - 1,
    MAX_ALARM_MS + 1,
    float(MAX_ALARM_MS) * 2,
]


def _id(when: Any) -> str:
    return "10**5000" if when == 10**5000 else repr(when)


@pytest.mark.parametrize("when", OUT_OF_RANGE, ids=_id)
async def test_out_of_range_alarm_times_fail_at_the_call_not_the_commit(
    make_runtime: MakeRuntime, backend: StorageBackend, when: Any
) -> None:
    rt = await make_runtime({"R": Reminder}, storage=backend)
    stub = rt.env.R.get_by_name("r")
    # schedule() puts "mode", then sets the alarm: the put is in the batch.
    with pytest.raises(TypeError) as info:
        await stub.schedule(when, "kept")
    assert any(
        word in str(info.value) for word in ("<= 0", "finite", str(MAX_ALARM_MS))
    )
    # The call was refused alone: the rest of its batch committed, durably.
    async with crash_and_restart(rt) as rt2:
        stub2 = rt2.env.R.get_by_name("r")
        assert await stub2.get_alarm() is None

        async def read(obj: Reminder, ctx: pyobjects.DurableObjectState) -> Any:
            return await ctx.storage.get("mode")

        assert await run_in_durable_object(stub2, read) == "kept"


async def test_an_out_of_range_alarm_in_a_batch_loses_none_of_it(
    make_runtime: MakeRuntime, backend: StorageBackend, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder}, storage=backend)
    stub = rt.env.R.get_by_name("r")
    at = manual_clock.now_ms() + 1_000

    async def body(obj: Reminder, ctx: pyobjects.DurableObjectState) -> list[str]:
        storage, refused = ctx.storage, []
        storage.put("a", 1)
        for when in (2**63, 1e300, -0.0):
            try:
                storage.set_alarm(when)
            except TypeError as exc:
                refused.append(type(exc).__name__)
        storage.put("b", 2)
        storage.set_alarm(at)
        return refused

    assert await run_in_durable_object(stub, body) == ["TypeError"] * 3
    async with crash_and_restart(rt) as rt2:
        stub2 = rt2.env.R.get_by_name("r")
        assert await stub2.get_alarm() == at

        async def read(obj: Reminder, ctx: pyobjects.DurableObjectState) -> Any:
            return await ctx.storage.get(["a", "b"])

        assert await run_in_durable_object(stub2, read) == {"a": 1, "b": 2}


async def test_the_latest_alarm_times_are_stored_on_every_backend(
    make_runtime: MakeRuntime, backend: StorageBackend, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder}, storage=backend)
    latest = dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=23)))
    latest_ms = (latest - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
        milliseconds=1
    )
    await rt.env.R.get_by_name("max").schedule(MAX_ALARM_MS)
    await rt.env.R.get_by_name("year-9999").schedule(latest)
    await rt.env.R.get_by_name("soon").schedule(manual_clock.now_ms() + 1_000)
    # Far-off alarms wait; a near one still fires.
    await manual_clock.advance(1_000)
    assert [run[0] for run in Reminder.runs] == ["soon"]
    async with crash_and_restart(rt) as rt2:
        assert await rt2.env.R.get_by_name("max").get_alarm() == MAX_ALARM_MS
        assert await rt2.env.R.get_by_name("year-9999").get_alarm() == latest_ms


async def test_set_alarm_needs_an_alarm_handler(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime({"N": NoAlarm})
    stub = rt.env.N.get_by_name("n")
    with pytest.raises(TypeError, match=r"must have an alarm\(\) handler"):
        await stub.try_set()
    # The constructor's set_alarm went through (not checked there).
    assert await stub.get() is not None


async def test_an_alarm_without_handler_is_dropped_not_retried(
    make_runtime: MakeRuntime,
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = await make_runtime({"N": NoAlarm})
    stub = rt.env.N.get_by_name("n")
    first = await stub.get()
    assert first is not None
    await manual_clock.advance(1_000)
    assert "without a handler" in caplog.text
    # The constructor of the instance that ran it set a new one; that is all.
    assert rt._alarms.scheduled <= 1


async def test_alarm_fires_at_its_time_with_its_info(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    at = manual_clock.now_ms() + 5_000
    await stub.schedule(at)
    await manual_clock.advance(4_999)
    assert Reminder.runs == []
    await manual_clock.advance(1)
    [(name, info, ran_at, seen)] = Reminder.runs
    assert name == "r"
    assert info == AlarmInfo(retry_count=0, is_retry=False, scheduled_time=at)
    assert info.retryCount == 0  # type: ignore[attr-defined]
    assert ran_at == at
    assert seen is None  # get_alarm() inside alarm(): not set any more
    assert await stub.get_alarm() is None  # deleted after success


async def test_handler_can_set_the_next_alarm(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "again")
    await manual_clock.advance(1_000)
    assert await stub.get_alarm() == start + 2_000
    await manual_clock.advance(1_000)
    assert [r[2] for r in Reminder.runs] == [start + 1_000, start + 2_000]
    assert await stub.get_alarm() is None


async def test_failures_are_retried_with_exponential_backoff_then_dropped(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "fail")
    await manual_clock.advance(1_000 + 2_000 + 4_000 + 8_000 + 16_000 + 32_000 + 64_000)
    times = [r[2] - start for r in Reminder.runs]
    assert times == [1_000, 3_000, 7_000, 15_000, 31_000, 63_000, 127_000]
    infos = [r[1] for r in Reminder.runs]
    assert [i.retry_count for i in infos] == [0, 1, 2, 3, 4, 5, 6]
    assert [i.is_retry for i in infos] == [False] + [True] * 6
    assert {i.scheduled_time for i in infos} == {start + 1_000}
    assert await stub.get_alarm() is None  # abandoned after 7 attempts
    await manual_clock.advance(10**6)
    assert len(Reminder.runs) == 7


async def test_a_failed_alarm_stays_set_until_its_retry(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    at = manual_clock.now_ms() + 1_000
    await stub.schedule(at, "fail")
    await manual_clock.advance(1_000)
    assert await stub.get_alarm() == at
    await stub.set_mode(None)
    await manual_clock.advance(2_000)
    assert len(Reminder.runs) == 2
    assert await stub.get_alarm() is None


async def test_a_new_alarm_set_before_failing_replaces_the_retry(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "set-then-fail")
    await manual_clock.advance(10_000)
    assert [(r[2] - start, r[1].retry_count) for r in Reminder.runs] == [
        (1_000, 0),
        (1_500, 0),
    ]


async def _restarted(
    rt: Runtime, backend: StorageBackend, manual_clock: ManualClock
) -> Runtime:
    """Crash *rt*; return a new runtime on the same storage (a fresh SQLiteBackend
    on the same directory, so that only what is on disk survives)."""
    await rt._crash()
    if isinstance(backend, SQLiteBackend):
        backend = SQLiteBackend(backend._directory)
    return Runtime(bindings={"R": Reminder}, storage=backend, clock=manual_clock)


async def test_retry_counts_survive_a_restart(
    make_runtime: MakeRuntime, backend: StorageBackend, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder}, storage=backend)
    start = manual_clock.now_ms()
    await rt.env.R.get_by_name("r").schedule(start + 1_000, "fail")
    await manual_clock.advance(3_000)  # attempts 0 and 1 failed; 2 is due at 7 s
    assert [r[1].retry_count for r in Reminder.runs] == [0, 1]
    await settle(backend)
    async with await _restarted(rt, backend, manual_clock) as rt2:
        await manual_clock.advance(3_999)
        assert len(Reminder.runs) == 2  # the backoff holds across the restart
        await manual_clock.advance(1 + 8_000 + 16_000 + 32_000 + 64_000)
        times = [r[2] - start for r in Reminder.runs]
        assert times == [1_000, 3_000, 7_000, 15_000, 31_000, 63_000, 127_000]
        infos = [r[1] for r in Reminder.runs]
        assert [i.retry_count for i in infos] == [0, 1, 2, 3, 4, 5, 6]
        assert {i.scheduled_time for i in infos} == {start + 1_000}
        # Seven attempts in all, restart or not: then it is abandoned.
        assert await rt2.env.R.get_by_name("r").get_alarm() is None
        await manual_clock.advance(10**6)
        assert len(Reminder.runs) == 7


async def test_a_new_alarm_starts_its_retries_at_zero_after_a_restart(
    make_runtime: MakeRuntime, backend: StorageBackend, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder}, storage=backend)
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "fail")
    await manual_clock.advance(1_000)  # attempt 0 failed
    await stub.schedule(start + 5_000)  # a new alarm replaces the retry
    await settle(backend)
    async with await _restarted(rt, backend, manual_clock):
        await manual_clock.advance(4_000)
        assert [(r[2] - start, r[1].retry_count) for r in Reminder.runs] == [
            (1_000, 0),
            (5_000, 0),
        ]


async def test_a_hanging_alarm_times_out_and_is_retried(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder}, alarm_timeout=60)
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "hang")
    await manual_clock.advance(1_000 + 60_000)
    await stub.set_mode(None)
    await manual_clock.advance(2_000)
    assert [r[2] - start for r in Reminder.runs] == [1_000, 63_000]
    assert Reminder.runs[1][1].retry_count == 1


async def test_abort_inside_alarm_is_retried(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "abort")
    await manual_clock.advance(1_000)
    fresh = rt.env.R.get_by_name("r")
    await fresh.set_mode(None)
    await manual_clock.advance(2_000)
    assert [r[1].retry_count for r in Reminder.runs] == [0, 1]


async def test_abort_without_retry_alarm_deletes_the_alarm(
    make_runtime: MakeRuntime, manual_clock: ManualClock, tmp_path: Path
) -> None:
    # Cloudflare's ctx.abort(reason, {retryAlarm: false}).
    rt = await make_runtime({"R": Reminder}, storage=SQLiteBackend(tmp_path))
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "abort-no-retry")
    await manual_clock.advance(1_000 + 300_000)
    assert [r[1].retry_count for r in Reminder.runs] == [0]  # never retried
    fresh = rt.env.R.get_by_name("r")
    assert await fresh.get_alarm() is None  # deleted: gone after a restart too
    async with crash_and_restart(rt) as restarted:
        await manual_clock.advance(300_000)
        assert await restarted.env.R.get_by_name("r").get_alarm() is None
    assert len(Reminder.runs) == 1


async def test_abort_retry_alarm_must_be_a_bool(
    make_runtime: MakeRuntime,
) -> None:
    rt = await make_runtime({"R": Reminder})

    async def body(obj: Reminder, ctx: pyobjects.DurableObjectState) -> None:
        ctx.abort("x", retry_alarm="no")  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="retry_alarm must be a bool"):
        await run_in_durable_object(rt.env.R.get_by_name("r"), body)


async def test_retry_jitter_can_be_turned_on(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder}, alarm_retry_jitter=True)
    stub = rt.env.R.get_by_name("r")
    start = manual_clock.now_ms()
    await stub.schedule(start + 1_000, "fail")
    await manual_clock.advance(1_000 + 2_500)
    assert len(Reminder.runs) == 2
    assert 3_000 <= Reminder.runs[1][2] - start <= 3_500


async def test_alarm_writes_roll_back_with_a_transaction(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    at = manual_clock.now_ms() + 1_000

    async def body(obj: Reminder, ctx: pyobjects.DurableObjectState) -> Any:
        async def closure(txn: Transaction) -> None:
            txn.set_alarm(at)
            assert await txn.get_alarm() == at
            txn.rollback()

        await ctx.storage.transaction(closure)
        before = await ctx.storage.get_alarm()
        async with ctx.storage.transaction() as txn:
            txn.setAlarm(at)  # type: ignore[attr-defined]
        return before, await ctx.storage.get_alarm()

    assert await run_in_durable_object(stub, body) == (None, at)


async def test_alarm_write_is_behind_the_output_gate(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    fail_next_commits(stub)
    with pytest.raises(DurableObjectResetError):
        await stub.schedule(manual_clock.now_ms() + 1_000)
    assert await rt.env.R.get_by_name("r").get_alarm() is None
    await manual_clock.advance(5_000)
    assert Reminder.runs == []


async def test_delete_all_deletes_the_alarm(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    await stub.schedule(manual_clock.now_ms() + 1_000)
    await stub.wipe()
    assert await stub.get_alarm() is None
    await manual_clock.advance(5_000)
    assert Reminder.runs == []


async def test_alarm_never_runs_twice_at_once(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    class Slow(DurableObject):
        running = 0
        max_running = 0
        runs = 0

        async def alarm(self, info: AlarmInfo) -> None:
            cls = type(self)
            cls.running += 1
            cls.runs += 1
            cls.max_running = max(cls.max_running, cls.running)
            if cls.runs == 1:
                # Set the next alarm for "now" while this one still runs.
                self.ctx.storage.set_alarm(self.ctx.now_ms())
                await manual_clock.sleep_until(self.ctx.now_ms() + 5_000)
            cls.running -= 1

        async def start(self) -> None:
            self.ctx.storage.set_alarm(self.ctx.now_ms() + 1)

    rt = await make_runtime({"S": Slow})
    await rt.env.S.get_by_name("s").start()
    await manual_clock.advance(10_000)
    assert Slow.runs == 2
    assert Slow.max_running == 1


async def test_evicted_object_keeps_its_alarm_and_name(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("named")
    await stub.schedule(manual_clock.now_ms() + 60_000)
    await evict(stub)
    await manual_clock.advance(60_000)
    assert [r[0] for r in Reminder.runs] == ["named"]


async def test_run_durable_object_alarm(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    assert await run_durable_object_alarm(stub) is False
    at = manual_clock.now_ms() + 3_600_000
    await stub.schedule(at)
    assert await run_durable_object_alarm(stub) is True
    [(_, info, ran_at, _)] = Reminder.runs
    assert info == AlarmInfo(retry_count=0, is_retry=False, scheduled_time=at)
    assert ran_at == manual_clock.now_ms()  # ran now, not at its time
    assert await stub.get_alarm() is None
    await manual_clock.advance(3_600_000)
    assert len(Reminder.runs) == 1  # the scheduled run was cancelled
    await stub.schedule(at + 1, "fail")
    with pytest.raises(RuntimeError, match="alarm failed"):
        await run_durable_object_alarm(stub)  # propagates, no retry
    assert await stub.get_alarm() is None


async def test_alarms_survive_a_crash_and_fire_after_restart(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("durable")
    start = manual_clock.now_ms()
    await stub.schedule(start + 10_000)
    async with crash_and_restart(rt) as rt2:
        await manual_clock.advance(9_999)
        assert Reminder.runs == []
        await manual_clock.advance(1)
        assert [(r[0], r[2] - start) for r in Reminder.runs] == [("durable", 10_000)]
        assert await rt2.env.R.get_by_name("durable").get_alarm() is None
    with pytest.raises(pyobjects.RuntimeClosedError):
        await stub.get_alarm()


async def test_overdue_alarms_fire_at_once_after_restart(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    await rt.env.R.get_by_name("late").schedule(manual_clock.now_ms() + 1_000)
    await rt._crash()
    await manual_clock.advance(60_000)  # the process was down meanwhile
    assert Reminder.runs == []
    await make_runtime({"R": Reminder})
    await manual_clock.advance(0)
    assert [r[0] for r in Reminder.runs] == ["late"]


async def test_alarms_survive_a_restart_on_sqlite(tmp_path: Path) -> None:
    clock = ManualClock()
    async with Runtime(
        bindings={"R": Reminder}, storage=SQLiteBackend(tmp_path), clock=clock
    ) as rt:
        await rt.env.R.get_by_name("disk").schedule(clock.now_ms() + 5_000)
    async with Runtime(
        bindings={"R": Reminder}, storage=SQLiteBackend(tmp_path), clock=clock
    ) as rt:
        await clock.advance(5_000)
        assert [r[0] for r in Reminder.runs] == ["disk"]
        assert await rt.env.R.get_by_name("disk").get_alarm() is None


async def test_many_alarms_share_one_timer_queue(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    class Tick(DurableObject):
        fired = 0

        async def alarm(self, info: AlarmInfo) -> None:
            type(self).fired += 1

        async def arm(self, at: int) -> None:
            self.ctx.storage.set_alarm(at)

    rt = await make_runtime({"T": Tick}, idle_timeout=1)
    start = manual_clock.now_ms()
    n = 3_000
    for i in range(n):
        await rt.env.T.get_by_name(f"t{i}").arm(start + 1_000 + i)
    assert rt._alarms.scheduled == n
    await manual_clock.advance(1_000 + n)
    assert Tick.fired == n
    assert rt._alarms.scheduled == 0


async def test_crash_fails_calls_in_flight_and_keeps_committed_writes(
    make_runtime: MakeRuntime,
) -> None:
    release = anyio.Event()

    class Notes(DurableObject):
        async def confirmed(self) -> None:
            self.ctx.storage.put("confirmed", 1)

        async def in_flight(self) -> None:
            self.ctx.storage.put("committed at the yield", 1)
            await release.wait()  # never returns: the crash fails the call

        async def read(self) -> dict[str, Any]:
            return await self.ctx.storage.list()

    rt = await make_runtime({"N": Notes})
    stub = rt.env.N.get_by_name("n")
    await stub.confirmed()
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await stub.in_flight()
        except RuntimeClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        async with crash_and_restart(rt) as rt2:
            # Writes are committed when the step that made them yields (as
            # workerd commits at the end of the turn), so nothing was pending.
            assert await rt2.env.N.get_by_name("n").read() == {
                "committed at the yield": 1,
                "confirmed": 1,
            }
    assert len(errors) == 1
    assert getattr(errors[0], "durable_object_reset", False)


async def test_fail_next_commits_resets_and_writes_nothing(
    make_runtime: MakeRuntime,
) -> None:
    class Pair(DurableObject):
        async def write(self, n: int) -> None:
            self.ctx.storage.put("a", n)
            self.ctx.storage.put("b", n)

        async def read(self) -> dict[str, Any]:
            return await self.ctx.storage.list()

    rt = await make_runtime({"P": Pair})
    stub = rt.env.P.get_by_name("p")
    await stub.write(1)
    fail_next_commits(stub, 2)
    for attempt in range(2):
        with pytest.raises(DurableObjectResetError) as info:
            await rt.env.P.get_by_name("p").write(attempt + 2)
        assert isinstance(info.value.__cause__, pyobjects.StorageError)
    assert await rt.env.P.get_by_name("p").read() == {"a": 1, "b": 1}
    await rt.env.P.get_by_name("p").write(9)
    assert await rt.env.P.get_by_name("p").read() == {"a": 9, "b": 9}
    with pytest.raises(ValueError, match="positive"):
        fail_next_commits(stub, 0)


async def test_helpers_refuse_stubs_of_a_runtime_that_is_not_running() -> None:
    rt = Runtime(bindings={"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    for helper in (evict, run_durable_object_alarm):
        with pytest.raises(pyobjects.RuntimeClosedError, match="not running"):
            await helper(stub)
    with pytest.raises(pyobjects.RuntimeClosedError, match="not running"):
        fail_next_commits(stub)
    with pytest.raises(TypeError, match="Runtime"):
        async with crash_and_restart("rt"):  # type: ignore[arg-type]
            pass


def test_alarm_logging_is_quiet_by_default() -> None:
    assert logging.getLogger("pyobjects").level in (logging.NOTSET, logging.WARNING)


async def test_crash_and_restart_keeps_a_runtime_made_memory_backend() -> None:
    class Note(DurableObject):
        async def write(self) -> None:
            self.ctx.storage.put("k", "v")

        async def read(self) -> Any:
            return await self.ctx.storage.get("k")

    async with Runtime(bindings={"N": Note}) as rt:
        await rt.env.N.get_by_name("a").write()
        async with crash_and_restart(rt) as rt2:
            assert rt2.storage is rt.storage
            assert await rt2.env.N.get_by_name("a").read() == "v"


async def test_setting_the_same_alarm_time_writes_nothing(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    from pyobjects.storage import MemoryBackend

    from .helpers import ControlledBackend

    controlled = ControlledBackend(MemoryBackend())
    rt = await make_runtime({"R": Reminder}, storage=controlled)
    stub = rt.env.R.get_by_name("r")
    at = manual_clock.now_ms() + 5_000

    async def body(obj: Reminder, ctx: pyobjects.DurableObjectState) -> None:
        ctx.storage.set_alarm(at)
        await ctx.storage.sync()
        ctx.storage.set_alarm(at)  # no write
        exact = dt.datetime.fromtimestamp(at / 1000, tz=dt.UTC)
        ctx.storage.set_alarm(exact + dt.timedelta(microseconds=999))  # same ms

    await run_in_durable_object(stub, body)
    assert [c.alarm for c in controlled.commits if c.alarm_changed] == [at]


async def test_rearming_alarms_does_not_grow_the_timer_heap(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    far = manual_clock.now_ms() + 86_400_000
    for i in range(3_000):
        await stub.schedule(far + i)
    assert len(rt._timers) <= 2  # the alarm (and the idle sweep)
    assert len(rt._timers._heap) < 2_100  # cancelled entries get compacted
    await manual_clock.advance(86_400_000 + 3_000)
    assert len(Reminder.runs) == 1


async def test_a_stale_index_entry_does_not_fire_a_deleted_alarm(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"R": Reminder})
    stub = rt.env.R.get_by_name("r")
    at = manual_clock.now_ms() + 1_000
    await stub.schedule(at)
    await stub.cancel()
    # Pretend the index still lists it (a crash between the two writes).
    rt._alarms.set(rt.env.R, str(stub.id), at)
    await manual_clock.advance(1_000)
    assert Reminder.runs == []
    # ... and an entry older than the stored time follows the stored time.
    await stub.schedule(at + 5_000)
    rt._alarms.set(rt.env.R, str(stub.id), at + 1_000)
    await manual_clock.advance(1_000)
    assert Reminder.runs == []
    await manual_clock.advance(4_000)
    assert [r[2] for r in Reminder.runs] == [at + 5_000]
