"""The event pipeline: behaviour every event kind shares (issue #10).

Resets fail events in flight, writes outside an event's step commit at once,
one instance per id whatever the binding, and group commit for every kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectBinding,
    DurableObjectResetError,
    Request,
    Response,
    Runtime,
    RuntimeClosedError,
)
from pyobjects.storage import MemoryBackend
from pyobjects.testing import ManualClock, crash_and_restart, run_in_durable_object

from .helpers import ControlledBackend
from .postgres import settle

if TYPE_CHECKING:
    from pyobjects.storage import StorageBackend
    from pyobjects.testing import MakeRuntime


class Sleeper(DurableObject):
    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        self.never = anyio.Event()

    async def wait_forever(self) -> str:
        await self.never.wait()
        return "woke"  # pragma: no cover - a reset fails it first

    async def sleep_long(self) -> str:
        await anyio.sleep(3600)  # trio opens a cancel scope around this
        return "slept"  # pragma: no cover

    async def call_other(self, name: str) -> str:
        other = self.env.S.get_by_name(name)
        return await other.wait_forever()  # type: ignore[no-any-return]

    async def quit(self, reason: str) -> None:
        self.ctx.abort(reason)

    async def fail_blocking(self) -> None:
        async def boom() -> None:
            raise ValueError("loading failed")

        await self.ctx.block_concurrency_while(boom)

    async def ping(self) -> str:
        return "pong"


async def _fail_in_flight(stub: Any, method: str, reset: Any) -> BaseException:
    """Start *method* (it waits forever), reset the object, return the error."""
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await getattr(stub, method)()
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(Exception):  # noqa: B017, PT011 - the resetting call fails too
            await reset()
        # The call in flight fails at once: nothing else wakes it.
        await anyio.wait_all_tasks_blocked()
        assert errors, "the call in flight is still hanging"
    return errors[0]


@pytest.mark.parametrize("method", ["wait_forever", "sleep_long"])
async def test_abort_fails_the_call_in_flight_with_its_reason(
    make_runtime: MakeRuntime, method: str
) -> None:
    rt = await make_runtime({"S": Sleeper})
    stub = rt.env.S.get_by_name("a")
    await stub.ping()  # built, and the pipeline has seen the methods
    other = rt.env.S.get_by_name("a")
    error = await _fail_in_flight(stub, method, lambda: other.quit("bye now"))
    assert isinstance(error, DurableObjectResetError)
    assert str(error) == "bye now"
    assert error.durable_object_reset is True
    # The stubs that saw the reset keep failing; a new stub reaches a fresh one.
    with pytest.raises(DurableObjectResetError):
        await stub.ping()
    assert await rt.env.S.get_by_name("a").ping() == "pong"


async def test_a_reset_fails_a_first_call_in_flight(make_runtime: MakeRuntime) -> None:
    # The very first call of a method (no history of suspending) fails too.
    rt = await make_runtime({"S": Sleeper})
    stub = rt.env.S.get_by_name("a")
    error = await _fail_in_flight(
        stub, "wait_forever", lambda: rt.env.S.get_by_name("a").quit("first")
    )
    assert str(error) == "first"
    assert getattr(error, "durable_object_reset", False)


async def test_a_failing_block_concurrency_while_fails_the_call_in_flight(
    make_runtime: MakeRuntime,
) -> None:
    rt = await make_runtime({"S": Sleeper})
    stub = rt.env.S.get_by_name("a")
    error = await _fail_in_flight(
        stub, "wait_forever", lambda: rt.env.S.get_by_name("a").fail_blocking()
    )
    assert isinstance(error, ValueError)
    assert str(error) == "loading failed"
    assert getattr(error, "durable_object_reset", False)


async def test_a_reset_fails_a_call_waiting_on_another_object(
    make_runtime: MakeRuntime,
) -> None:
    rt = await make_runtime({"S": Sleeper})
    caller = rt.env.S.get_by_name("caller")
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await caller.call_other("callee")
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(DurableObjectResetError):
            await rt.env.S.get_by_name("caller").quit("caller reset")
        await anyio.wait_all_tasks_blocked()
        assert [str(e) for e in errors] == ["caller reset"]
        # The callee keeps running: only the caller was reset.
        tg.cancel_scope.cancel()


class Background(DurableObject):
    async def start(self) -> None:
        async def bg() -> None:
            self.ctx.storage.put("from-bg", 1)
            await anyio.sleep_forever()

        self.ctx.wait_until(bg())

    async def start_timer_task(self) -> None:
        async def later() -> None:
            await anyio.lowlevel.checkpoint()
            self.ctx.storage.put("from-task", 2)
            await anyio.sleep_forever()

        self.ctx.wait_until(later())

    async def write_then_wait(self) -> None:
        self.ctx.storage.put("in-step", 3)
        await anyio.sleep_forever()

    async def quit(self) -> None:
        self.ctx.abort()

    async def read(self) -> dict[str, Any]:
        return await self.ctx.storage.list()


@pytest.mark.parametrize("method", ["start", "start_timer_task"])
async def test_writes_of_background_tasks_commit_when_the_task_yields(
    backend: StorageBackend, method: str
) -> None:
    controlled = ControlledBackend(backend)
    async with Runtime(bindings={"B": Background}, storage=controlled) as rt:
        stub = rt.env.B.get_by_name("b")
        await getattr(stub, method)()
        await anyio.wait_all_tasks_blocked()
        assert [dict(c.writes) for c in controlled.commits] != []
        # An abort now must not lose the background write: it is durable.
        with pytest.raises(DurableObjectResetError):
            await rt.env.B.get_by_name("b").quit()
        assert await rt.env.B.get_by_name("b").read() in (
            {"from-bg": 1},
            {"from-task": 2},
        )


async def test_a_write_commits_when_its_event_yields(backend: StorageBackend) -> None:
    # workerd commits at the end of the turn: a crash while the event waits
    # keeps the write (nobody was told, but it is not held back either).
    async with Runtime(bindings={"B": Background}, storage=backend) as rt:
        stub = rt.env.B.get_by_name("b")
        failed: list[BaseException] = []

        async def caller() -> None:
            try:
                await stub.write_then_wait()
            except RuntimeClosedError as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            await settle(backend)  # over a network, the commit takes a while
            async with crash_and_restart(rt) as rt2:
                assert await rt2.env.B.get_by_name("b").read() == {"in-step": 3}
        assert len(failed) == 1  # the caller learns its object went away


class Counter(DurableObject):
    instances = 0

    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        type(self).instances += 1
        self.live = 0

    async def increment(self) -> int:
        value = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", value)
        return value

    async def fetch(self, request: Request) -> Response:
        value = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", value)
        return Response(str(value))


class Other(DurableObject):
    pass


async def test_bindings_with_the_same_key_share_one_instance_per_id() -> None:
    Counter.instances = 0
    bindings: dict[str, type[DurableObject] | DurableObjectBinding] = {
        "A": Counter,
        "ALIAS": DurableObjectBinding(object_class=Counter, unique_key="A"),
    }
    async with Runtime(bindings=bindings) as rt:
        a = rt.env.A.get_by_name("x")
        alias = rt.env.ALIAS.get_by_name("x")
        assert a.id == alias.id
        results: list[int] = []

        async def bump(stub: Any) -> None:
            for _ in range(50):
                value = await stub.increment()
                results.append(value)

        async with anyio.create_task_group() as tg:
            tg.start_soon(bump, a)
            tg.start_soon(bump, alias)
        assert sorted(results) == list(range(1, 101))  # no lost update
        assert Counter.instances == 1
        stats = rt.statistics()
        assert stats.live_objects == 1
        assert list(stats.namespaces) == ["A"]


async def test_bindings_with_the_same_key_and_different_classes_are_refused() -> None:
    bindings: dict[str, type[DurableObject] | DurableObjectBinding] = {
        "A": Counter,
        "B": DurableObjectBinding(object_class=Other, unique_key="A"),
    }
    with pytest.raises(ValueError, match="same namespace key 'A'"):
        Runtime(bindings=bindings)


async def test_fetches_share_slow_commits_like_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pyobjects._core._gates.GROUP_COMMIT_NS", -1)
    controlled = ControlledBackend(MemoryBackend())
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        stub = rt.env.C.get_by_name("n")

        async def caller() -> None:
            for _ in range(20):
                await stub.fetch("https://counter/")

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(caller)
        response = await stub.fetch("https://counter/")
        assert await response.text() == "2001"
    # Grouped: a few commits per round of 100 callers (trio schedules them in
    # a less regular order than asyncio), never one per event.
    assert len(controlled.commits) <= 250


async def test_statistics_count_what_the_runtime_did(
    manual_clock: ManualClock,
) -> None:
    async with Runtime(
        bindings={"C": Counter, "S": Sleeper}, clock=manual_clock, idle_timeout=1
    ) as rt:
        empty = rt.statistics()
        assert empty.live_objects == 0
        assert empty.events["call"] == 0
        counter = rt.env.C.get_by_name("a")
        await counter.increment()
        await counter.fetch("https://x/")
        await run_in_durable_object(counter, lambda obj, ctx: obj.increment())
        with pytest.raises(DurableObjectResetError):
            await rt.env.S.get_by_name("s").quit("stop")
        stats = rt.statistics()
        assert stats.live_objects == 1
        c = stats.namespaces["C"]
        assert dict(c.events) == {
            "call": 1,
            "fetch": 1,
            "alarm": 0,
            "websocket": 0,
            "run": 1,
        }
        assert c.commits == 3
        assert stats.namespaces["S"].resets == 1
        assert stats.resets == 1
        assert stats.events["call"] == 2
        await manual_clock.advance(1_000)
        stats = rt.statistics()
        assert stats.live_objects == 0
        assert stats.evictions == 1
        assert stats.events_in_flight == 0


class Alarmed(DurableObject):
    fired: ClassVar[list[str]] = []

    async def arm(self, at: int) -> None:
        self.ctx.storage.set_alarm(at)

    async def alarm(self) -> None:  # Cloudflare's samples take no argument
        type(self).fired.append("fired")


async def test_alarm_handlers_without_a_parameter_are_called(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    Alarmed.fired = []
    rt = await make_runtime({"A": Alarmed})
    await rt.env.A.get_by_name("a").arm(manual_clock.now_ms() + 10)
    await manual_clock.advance(10)
    assert Alarmed.fired == ["fired"]
    stats = rt.statistics()
    assert stats.events["alarm"] == 1
    assert stats.pending_alarms == 0


async def test_the_statistics_example_of_the_testing_guide(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"COUNTER": Counter}, idle_timeout=10)
    await rt.env.COUNTER.get_by_name("a").increment()
    assert rt.statistics().live_objects == 1
    await manual_clock.advance(70_000)
    stats = rt.statistics()
    assert (stats.live_objects, stats.evictions) == (0, 1)
    assert stats.namespaces["COUNTER"].events["call"] == 1


async def test_the_input_gates_open_flag_follows_its_state() -> None:
    # InputGate.is_open is a plain attribute kept up to date by hand (every
    # event reads it): check it against the state it summarises through
    # closes, queued events, departures and a failure.
    from pyobjects._core._gates import InputGate

    gate = InputGate()

    def check() -> None:
        assert gate.is_open == (gate._closed == 0 and not gate._waiters)

    check()
    gate.close()
    check()
    entered: list[int] = []
    async with anyio.create_task_group() as tg:

        async def enter(n: int) -> None:
            await gate.enter()
            entered.append(n)
            check()

        for n in range(3):  # one at a time: trio starts tasks in any order
            tg.start_soon(enter, n)
            await anyio.wait_all_tasks_blocked()
        check()
        assert not gate.is_open
        assert gate.queued == 3
        gate.open()
        check()
    assert entered == [0, 1, 2]
    check()
    assert gate.is_open
    gate.close()
    async with anyio.create_task_group() as tg:
        tg.start_soon(gate.enter)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()  # the waiter leaves the queue
    check()
    gate.open()
    check()
    assert gate.is_open
    gate.close()
    async with anyio.create_task_group() as tg:
        tg.start_soon(gate.enter)
        await anyio.wait_all_tasks_blocked()
        gate.fail_all()
    check()


class Writer(DurableObject):
    async def write(self, key: str) -> None:
        # Commits as the event ends (the event's own path).
        self.ctx.storage.put(key, 1)

    async def write_and_yield(self, key: str) -> None:
        self.ctx.storage.put(key, 1)
        # Commits when the handler yields (the flusher task's path).
        await anyio.lowlevel.checkpoint()

    async def keys(self) -> list[str]:
        return list(await self.ctx.storage.list())


async def test_commits_of_a_suspending_store_run_one_at_a_time_in_order() -> None:
    # A server-backed store suspends in commit(): while one commit is on its
    # way, the next batch must wait for it (the flusher used not to), or a
    # later batch could land first, and two commits could race for one
    # sequence number.
    backend = ControlledBackend(MemoryBackend())
    backend.hold = anyio.Event()
    async with Runtime(bindings={"W": Writer}, storage=backend) as rt:
        stub = rt.env.W.get_by_name("w")
        async with anyio.create_task_group() as tg:
            tg.start_soon(stub.write, "a")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(stub.write_and_yield, "b")
            await anyio.wait_all_tasks_blocked()
            assert [dict(c.writes) for c in backend.commits] == [{"a": b"\x01"}]
            backend.hold.set()
        assert [list(c.writes) for c in backend.commits] == [["a"], ["b"]]
        assert await stub.keys() == ["a", "b"]


class HeldStore:
    """A store whose commits suspend, and wait while ``held`` is set."""

    def __init__(self, inner: Any, log: list[tuple[str, list[str]]], name: str) -> None:
        self._inner = inner
        self._log = log
        self._name = name
        self.held: anyio.Event | None = None

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    async def commit(self, batch: Any) -> None:
        await anyio.lowlevel.checkpoint()  # a server round trip
        if self.held is not None:
            await self.held.wait()
        await self._inner.commit(batch)
        self._log.append((self._name, list(batch.writes)))


class HeldBackend:
    """A MemoryBackend whose stores are HeldStores (one per object id)."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.log: list[tuple[str, list[str]]] = []
        self.stores: dict[str, HeldStore] = {}

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    def open(self, namespace: str, object_id: str, /) -> Any:
        store = HeldStore(self.inner.open(namespace, object_id), self.log, object_id)
        self.stores[object_id] = store
        return store


class Later(DurableObject):
    async def write(self, key: str) -> None:
        self.ctx.storage.put(key, 1)

    async def write_later(self, key: str) -> None:
        async def later() -> None:
            await anyio.lowlevel.checkpoint()
            self.ctx.storage.put(key, 1)  # outside the event: the flusher commits it

        self.ctx.wait_until(later())


async def test_one_slow_background_commit_does_not_hold_back_the_others() -> None:
    backend = HeldBackend()
    async with Runtime(bindings={"L": Later}, storage=backend) as rt:
        a, b = rt.env.L.get_by_name("a"), rt.env.L.get_by_name("b")
        await a.write("primed")  # each store has suspended once now
        await b.write("primed")
        held = backend.stores[str(a.id)].held = anyio.Event()
        await a.write_later("x")
        await anyio.wait_all_tasks_blocked()
        await b.write_later("y")
        await anyio.wait_all_tasks_blocked()
        # a's commit waits for its server; b's went ahead meanwhile.
        assert (str(b.id), ["y"]) in backend.log
        assert (str(a.id), ["x"]) not in backend.log
        held.set()
        await anyio.wait_all_tasks_blocked()
        assert (str(a.id), ["x"]) in backend.log
