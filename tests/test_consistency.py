"""Input gate, output gate, write coalescing, resets (reference §3, §6)."""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    Runtime,
    RuntimeClosedError,
)
from pyobjects.storage import MemoryBackend, StorageBackend, Transaction
from pyobjects.testing import ManualClock, run_in_durable_object

from .helpers import ControlledBackend


class Counter(DurableObject):
    constructed = 0

    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        type(self).constructed += 1
        self.memory = 0

    async def increment(self) -> int:
        value = (await self.ctx.storage.get("n")) or 0
        self.ctx.storage.put("n", value + 1)
        return value + 1

    async def increment_with_sleep(self) -> int:
        value = (await self.ctx.storage.get("n")) or 0
        await anyio.sleep(0.001)
        self.ctx.storage.put("n", value + 1)
        return value + 1

    async def get(self) -> Any:
        return await self.ctx.storage.get("n")

    async def put_many(self, n: int) -> None:
        for i in range(n):
            self.ctx.storage.put(f"k{i:03}", i)

    async def put_then_raise(self) -> None:
        self.ctx.storage.put("written", True)
        raise ValueError("after put")

    async def put_and_read_back(self) -> Any:
        self.ctx.storage.put("x", {"v": 1})
        return await self.ctx.storage.get("x")

    async def bump_memory(self) -> int:
        self.memory += 1
        return self.memory


async def _count(backend: StorageBackend, method: str, calls: int = 100) -> int:
    async with Runtime(bindings={"C": Counter}, storage=backend) as rt:
        stub = rt.env.C.get_by_name("n")
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(getattr(stub, method))
        return await stub.get()  # type: ignore[no-any-return]


async def test_read_modify_write_without_other_awaits_is_atomic(
    backend: StorageBackend,
) -> None:
    assert await _count(backend, "increment") == 100


async def test_a_sleep_between_read_and_write_lets_other_events_interleave(
    backend: StorageBackend,
) -> None:
    # As in workerd: non-storage awaits open the gate, so updates are lost.
    assert await _count(backend, "increment_with_sleep") < 100


async def test_writes_without_yield_commit_in_one_batch() -> None:
    controlled = ControlledBackend(MemoryBackend())
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        await rt.env.C.get_by_name("x").put_many(100)
    assert len(controlled.commits) == 1
    assert len(controlled.commits[0].writes) == 100


async def test_unawaited_put_commits_even_when_handler_raises(
    backend: StorageBackend,
) -> None:
    async with Runtime(bindings={"C": Counter}, storage=backend) as rt:
        stub = rt.env.C.get_by_name("x")
        with pytest.raises(ValueError, match="after put"):
            await stub.put_then_raise()
    async with Runtime(bindings={"C": Counter}, storage=backend) as rt:

        async def read(obj: Counter, ctx: pyobjects.DurableObjectState) -> Any:
            return await ctx.storage.get("written")

        assert await run_in_durable_object(rt.env.C.get_by_name("x"), read) is True


async def test_unawaited_writes_emit_no_warning() -> None:
    # filterwarnings=error turns a "never awaited" RuntimeWarning into a failure.
    async with Runtime(bindings={"C": Counter}) as rt:
        stub = rt.env.C.get_by_name("x")

        async def body(obj: Counter, ctx: pyobjects.DurableObjectState) -> None:
            ctx.storage.put("a", 1)
            ctx.storage.delete("a")
            ctx.storage.put({"b": 2})
            ctx.storage.delete(["b"])
            ctx.storage.delete_all()

        await run_in_durable_object(stub, body)
        gc.collect()


async def test_reads_see_own_pending_and_in_flight_writes() -> None:
    controlled = ControlledBackend(MemoryBackend())
    controlled.hold = anyio.Event()
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        stub = rt.env.C.get_by_name("x")

        async def body(obj: Counter, ctx: pyobjects.DurableObjectState) -> Any:
            ctx.storage.put("x", 1)
            pending = (await ctx.storage.get("x"), await ctx.storage.list())
            async with anyio.create_task_group() as tg:
                tg.start_soon(ctx.storage.sync)  # starts the commit; it is held
                await anyio.wait_all_tasks_blocked()
                assert len(controlled.commits) == 1
                ctx.storage.put("y", 2)
                in_flight = (await ctx.storage.get("x"), await ctx.storage.list())
                assert controlled.hold is not None
                controlled.hold.set()
            return pending, in_flight

        with anyio.fail_after(5):
            result = await run_in_durable_object(stub, body)
        assert result == ((1, {"x": 1}), (1, {"x": 1, "y": 2}))
        assert [dict(c.writes) for c in controlled.commits] == [
            {"x": b"\x01"},
            {"y": b"\x02"},
        ]


async def test_output_gate_holds_result_until_commit_is_durable() -> None:
    controlled = ControlledBackend(MemoryBackend())
    controlled.hold = anyio.Event()
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        stub = rt.env.C.get_by_name("x")
        delivered: list[int] = []

        async def call() -> None:
            delivered.append(await stub.increment())

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            assert len(controlled.commits) == 1
            assert delivered == []  # written, not durable: result held back
            controlled.hold.set()
        assert delivered == [1]


async def test_exception_is_also_held_until_durable() -> None:
    controlled = ControlledBackend(MemoryBackend())
    controlled.hold = anyio.Event()
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        stub = rt.env.C.get_by_name("x")
        raised: list[BaseException] = []

        async def call() -> None:
            try:
                await stub.put_then_raise()
            except ValueError as exc:
                raised.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            assert raised == []
            controlled.hold.set()
        assert len(raised) == 1


async def test_failed_commit_resets_object_and_flags_callers() -> None:
    controlled = ControlledBackend(MemoryBackend())
    Counter.constructed = 0
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        ns = rt.env.C
        stub = ns.get_by_name("x")
        assert await stub.increment() == 1
        assert await stub.bump_memory() == 1
        controlled.fail_next = 1
        with pytest.raises(DurableObjectResetError) as info:
            await stub.increment()
        assert info.value.durable_object_reset is True
        assert isinstance(info.value.__cause__, OSError)
        # The stub that saw the reset keeps failing ...
        with pytest.raises(DurableObjectResetError):
            await stub.get()
        # ... a new stub reaches a fresh instance built from durable state.
        fresh = ns.get_by_name("x")
        assert await fresh.get() == 1  # the failed write is not there
        assert await fresh.bump_memory() == 1  # in-memory state was dropped
        assert Counter.constructed == 2


async def test_failed_commit_replaces_an_application_exception() -> None:
    controlled = ControlledBackend(MemoryBackend())
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        controlled.fail_next = 1
        with pytest.raises(DurableObjectResetError):
            await rt.env.C.get_by_name("x").put_then_raise()


async def test_concurrent_callers_all_get_the_reset() -> None:
    controlled = ControlledBackend(MemoryBackend())
    controlled.hold = anyio.Event()
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        stub = rt.env.C.get_by_name("x")
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await stub.increment()
            except DurableObjectResetError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            controlled.fail_next = 1
            controlled.hold.set()
        assert len(errors) == 5
        assert len({id(e) for e in errors}) == 5  # each caller has its own copy
        assert all(getattr(e, "durable_object_reset", False) for e in errors)


class Loader(DurableObject):
    loads = 0
    fail_load = False
    load_forever = False

    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        self.value: Any = None
        self.events: list[str] = []
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        type(self).loads += 1
        await anyio.lowlevel.checkpoint()
        if type(self).load_forever:
            await anyio.sleep_forever()
        if type(self).fail_load:
            raise ValueError("load failed")
        self.value = (await self.ctx.storage.get("v")) or "default"
        self.events.append("loaded")

    async def read(self) -> Any:
        self.events.append("read")
        return self.value

    async def events_seen(self) -> list[str]:
        return self.events

    async def critical(self, fail: bool) -> str:
        async def section() -> str:
            await anyio.lowlevel.checkpoint()
            if fail:
                raise KeyError("critical failed")
            return "done"

        return await self.ctx.block_concurrency_while(section)

    async def quick(self) -> str:
        return "quick"

    async def nest(self, depth: int) -> int:
        async def inner(d: int) -> int:
            if d == 0:
                return 0
            return 1 + await self.ctx.block_concurrency_while(inner, d - 1)

        return await self.ctx.block_concurrency_while(inner, depth)

    async def abort_after_write(self) -> None:
        self.ctx.storage.put("v", "lost")
        self.ctx.abort("custom reason")

    async def abort_default(self) -> None:
        with contextlib.suppress(DurableObjectResetError):
            self.ctx.abort()  # caught, but the instance is reset anyway


@pytest.fixture
def loader() -> type[Loader]:
    Loader.loads = 0
    Loader.fail_load = False
    Loader.load_forever = False
    return Loader


async def test_bcw_in_constructor_holds_first_events(loader: type[Loader]) -> None:
    async with Runtime(bindings={"L": loader}) as rt:
        stub = rt.env.L.get_by_name("x")
        results: list[Any] = []
        async with anyio.create_task_group() as tg:
            for _ in range(3):

                async def call() -> None:
                    results.append(await stub.read())

                tg.start_soon(call)
        assert results == ["default"] * 3
        assert await stub.events_seen() == ["loaded", "read", "read", "read"]


async def test_bcw_awaited_returns_value_and_blocks_other_events(
    loader: type[Loader],
) -> None:
    async with Runtime(bindings={"L": loader}) as rt:
        stub = rt.env.L.get_by_name("x")
        await stub.read()
        order: list[str] = []

        async def critical() -> None:
            order.append(await stub.critical(False))

        async def quick() -> None:
            order.append(await stub.quick())

        async with anyio.create_task_group() as tg:
            tg.start_soon(critical)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(quick)
        assert order == ["done", "quick"]


async def test_failing_bcw_in_constructor_resets_and_flags_every_waiter(
    loader: type[Loader],
) -> None:
    loader.fail_load = True
    async with Runtime(bindings={"L": loader}) as rt:
        stub = rt.env.L.get_by_name("x")
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await stub.read()
            except ValueError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(call)
        assert len(errors) == 3
        assert all(str(e) == "load failed" for e in errors)
        assert all(getattr(e, "durable_object_reset", False) for e in errors)
        with pytest.raises(ValueError, match="load failed"):
            await stub.read()  # this stub stays broken
        loader.fail_load = False
        assert await rt.env.L.get_by_name("x").read() == "default"
        assert loader.loads == 2


async def test_failing_awaited_bcw_resets_the_object(loader: type[Loader]) -> None:
    async with Runtime(bindings={"L": loader}) as rt:
        stub = rt.env.L.get_by_name("x")
        with pytest.raises(KeyError, match="critical failed") as info:
            await stub.critical(True)
        assert getattr(info.value, "durable_object_reset", False)
        assert await rt.env.L.get_by_name("x").read() == "default"
        assert loader.loads == 2


async def test_bcw_timeout_resets_with_overloaded_error(loader: type[Loader]) -> None:
    loader.load_forever = True
    clock = ManualClock()
    async with Runtime(
        bindings={"L": loader}, clock=clock, block_concurrency_timeout=5
    ) as rt:
        stub = rt.env.L.get_by_name("x")
        errors: list[DurableObjectResetError] = []

        async def call() -> None:
            try:
                await stub.read()
            except DurableObjectResetError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await clock.advance(4_999)
            assert errors == []
            await clock.advance(1)
        assert len(errors) == 1
        assert "waited for too long" in str(errors[0])
        assert errors[0].overloaded
        assert errors[0].durable_object_reset


async def test_bcw_nesting_limit(loader: type[Loader]) -> None:
    async with Runtime(bindings={"L": loader}) as rt:
        stub = rt.env.L.get_by_name("x")
        assert await stub.nest(10) == 10
        with pytest.raises(RuntimeError, match="nested too deeply"):
            await stub.nest(70)


async def test_abort_discards_uncommitted_writes_and_resets(
    loader: type[Loader],
) -> None:
    async with Runtime(bindings={"L": loader}) as rt:
        stub = rt.env.L.get_by_name("x")
        with pytest.raises(DurableObjectResetError, match="custom reason") as info:
            await stub.abort_after_write()
        assert info.value.durable_object_reset
        assert (
            await rt.env.L.get_by_name("x").read() == "default"
        )  # "lost" was discarded
        fresh = rt.env.L.get_by_name("y")
        with pytest.raises(
            DurableObjectResetError, match=r"Application called abort\(\) to reset"
        ):
            await fresh.abort_default()


async def test_constructor_failure_reaches_caller_and_next_call_retries() -> None:
    class Fragile(DurableObject):
        fail = True

        def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
            super().__init__(ctx, env)
            if type(self).fail:
                raise RuntimeError("constructor broke")

        async def ping(self) -> str:
            return "pong"

    async with Runtime(bindings={"F": Fragile}) as rt:
        with pytest.raises(RuntimeError, match="constructor broke") as info:
            await rt.env.F.get_by_name("x").ping()
        assert any("constructor" in n for n in info.value.__notes__)
        Fragile.fail = False
        assert await rt.env.F.get_by_name("x").ping() == "pong"


async def test_idle_instances_are_evicted_and_rebuilt_from_storage() -> None:
    clock = ManualClock()
    Counter.constructed = 0
    async with Runtime(bindings={"C": Counter}, clock=clock, idle_timeout=10) as rt:
        stub = rt.env.C.get_by_name("x")
        assert await stub.increment() == 1
        assert await stub.bump_memory() == 1
        await clock.advance(9_999)
        assert await stub.bump_memory() == 2  # still alive; idle timer restarted
        await clock.advance(10_000)
        assert rt.statistics().live_objects == 0
        assert await stub.increment() == 2  # storage survived eviction
        assert await stub.bump_memory() == 1  # memory did not
        assert Counter.constructed == 2


async def test_eviction_can_be_disabled() -> None:
    clock = ManualClock()
    async with Runtime(bindings={"C": Counter}, clock=clock, idle_timeout=None) as rt:
        stub = rt.env.C.get_by_name("x")
        await stub.bump_memory()
        await clock.advance(10**9)
        assert await stub.bump_memory() == 2


async def test_many_ids_do_not_accumulate_instances() -> None:
    clock = ManualClock()
    async with Runtime(bindings={"C": Counter}, clock=clock, idle_timeout=1) as rt:
        ns = rt.env.C
        for batch in range(5):
            for i in range(2_000):
                await ns.get_by_name(f"{batch}-{i}").bump_memory()
            assert rt.statistics().live_objects <= 2_000
            await clock.advance(1_000)
            assert rt.statistics().live_objects == 0
        assert rt.statistics().live_objects == 0


async def test_outgoing_calls_wait_for_the_callers_writes() -> None:
    controlled = ControlledBackend(MemoryBackend())
    seen_commits: list[int] = []

    class Sender(DurableObject):
        async def send(self) -> None:
            self.ctx.storage.put("sent", True)
            await self.env.RECV.get_by_name("r").receive()

    class Receiver(DurableObject):
        async def receive(self) -> None:
            seen_commits.append(len(controlled.commits))

    async with Runtime(
        bindings={"SEND": Sender, "RECV": Receiver}, storage=controlled
    ) as rt:
        await rt.env.SEND.get_by_name("s").send()
    # The sender's write was committed before the call reached the receiver.
    assert seen_commits == [1]
    assert dict(controlled.commits[0].writes) == {"sent": b"\xc3"}


async def test_too_many_queued_events_raise_overloaded() -> None:
    gate_open = anyio.Event()

    class Busy(DurableObject):
        def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
            super().__init__(ctx, env)
            ctx.block_concurrency_while(gate_open.wait)

        async def ping(self) -> str:
            return "pong"

    async with Runtime(bindings={"B": Busy}, max_queued_events=3) as rt:
        stub = rt.env.B.get_by_name("x")
        results: list[str] = []
        async with anyio.create_task_group() as tg:
            for _ in range(3):

                async def call() -> None:
                    results.append(await stub.ping())

                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(
                pyobjects.OverloadedError, match="Too many requests queued"
            ):
                await stub.ping()
            gate_open.set()
        assert results == ["pong"] * 3


async def test_wait_until_keeps_the_object_alive_and_logs_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    finished = anyio.Event()

    class Background(DurableObject):
        async def start(self, fail: bool) -> None:
            async def work() -> None:
                await clock.sleep_until(clock.now_ms() + 20_000)
                self.ctx.storage.put("done", True)
                finished.set()
                if fail:
                    raise ValueError("background failed")

            self.ctx.wait_until(work())

    async with Runtime(bindings={"B": Background}, clock=clock, idle_timeout=1) as rt:
        stub = rt.env.B.get_by_name("x")
        await stub.start(True)
        await clock.advance(10_000)
        assert rt.statistics().live_objects == 1  # not evicted while work is pending
        await clock.advance(10_000)
        assert finished.is_set()

        async def read(obj: Any, ctx: pyobjects.DurableObjectState) -> Any:
            return await ctx.storage.get("done")

        assert await run_in_durable_object(stub, read) is True

        async def bad(obj: Any, ctx: pyobjects.DurableObjectState) -> None:
            ctx.wait_until(42)  # type: ignore[arg-type]

        with pytest.raises(TypeError, match="awaitable"):
            await run_in_durable_object(stub, bad)
    assert "background failed" in caplog.text


async def test_transactions_of_concurrent_events_are_serialized(
    backend: StorageBackend,
) -> None:
    order: list[str] = []

    class Txn(DurableObject):
        async def slow(self) -> None:
            async with self.ctx.storage.transaction() as txn:
                order.append("slow-start")
                txn.put("k", "slow")
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                order.append("slow-end")

        async def late(self) -> None:
            # Already running when `slow` starts its transaction: it resumes
            # during it, and its own transaction must wait.
            await anyio.lowlevel.checkpoint()
            async with self.ctx.storage.transaction() as txn:
                order.append("late-start")
                txn.put("k", "late")
                order.append("late-end")

        async def value(self) -> Any:
            return await self.ctx.storage.get("k")

    async with Runtime(bindings={"T": Txn}, storage=backend) as rt:
        stub = rt.env.T.get_by_name("x")
        async with anyio.create_task_group() as tg:
            tg.start_soon(stub.late)
            tg.start_soon(stub.slow)
        assert order == ["slow-start", "slow-end", "late-start", "late-end"]
        assert await stub.value() == "late"


async def test_queued_callers_can_be_cancelled_and_the_rest_keep_order() -> None:
    release = anyio.Event()

    class Gated(DurableObject):
        def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
            super().__init__(ctx, env)
            self.seen: list[int] = []
            ctx.block_concurrency_while(release.wait)

        async def record(self, n: int) -> None:
            self.seen.append(n)
            if n == 0:
                # Close the gate again before the next waiter runs.
                await self.ctx.block_concurrency_while(anyio.lowlevel.checkpoint)

        async def seen_calls(self) -> list[int]:
            return self.seen

    async with Runtime(bindings={"G": Gated}) as rt:
        stub = rt.env.G.get_by_name("x")
        async with anyio.create_task_group() as tg:
            scopes: dict[int, anyio.CancelScope] = {}

            async def call(n: int) -> None:
                with anyio.CancelScope() as scope:
                    scopes[n] = scope
                    await stub.record(n)

            for n in range(6):
                tg.start_soon(call, n)
                await anyio.wait_all_tasks_blocked()
            scopes[2].cancel()  # a queued caller gives up
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert await stub.seen_calls() == [0, 1, 3, 4, 5]


async def test_writes_of_another_event_do_not_join_an_open_transaction(
    backend: StorageBackend,
) -> None:
    class Mixed(DurableObject):
        async def writer(self) -> Any:
            await anyio.lowlevel.checkpoint()  # resumes during the transaction
            self.ctx.storage.put("outside", 1)
            return await self.ctx.storage.get("inside")  # must not see it

        async def rolled_back(self) -> None:
            async def closure(txn: Transaction) -> None:
                txn.put("inside", 1)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                raise KeyError("roll back")

            with contextlib.suppress(KeyError):
                await self.ctx.storage.transaction(closure)

        async def read(self) -> Any:
            return await self.ctx.storage.list()

    async with Runtime(bindings={"M": Mixed}, storage=backend) as rt:
        stub = rt.env.M.get_by_name("x")
        seen: list[Any] = []

        async def writer() -> None:
            seen.append(await stub.writer())

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            tg.start_soon(stub.rolled_back)
        assert seen == [None]
        assert await stub.read() == {"outside": 1}


async def test_reset_errors_name_the_object() -> None:
    class Quitter(DurableObject):
        async def quit(self) -> None:
            self.ctx.abort("bye")

    async with Runtime(bindings={"Q": Quitter}) as rt:
        stub = rt.env.Q.get_by_name("x")
        with pytest.raises(DurableObjectResetError) as info:
            await stub.quit()
        assert any("was reset" in n and str(stub.id) in n for n in info.value.__notes__)


async def test_slow_commits_are_shared_by_concurrent_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pretend every commit is slow: events then wait one turn and share commits.
    monkeypatch.setattr("pyobjects._core._gates.GROUP_COMMIT_NS", -1)
    controlled = ControlledBackend(MemoryBackend())
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        stub = rt.env.C.get_by_name("n")

        async def caller() -> None:
            for _ in range(20):
                await stub.increment()

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(caller)
        assert await stub.get() == 2_000
    # One commit per round of the 100 callers, not one per increment.
    assert len(controlled.commits) <= 100


async def test_fast_commits_happen_at_once_without_a_context_switch() -> None:
    controlled = ControlledBackend(MemoryBackend())
    async with Runtime(bindings={"C": Counter}, storage=controlled) as rt:
        stub = rt.env.C.get_by_name("n")
        for i in range(1, 11):
            assert await stub.increment() == i
            assert len(controlled.commits) == i  # committed before the result


async def test_an_evicted_instance_fails_clearly_if_still_referenced() -> None:
    kept: list[pyobjects.DurableObjectState] = []

    class Keeper(DurableObject):
        async def keep(self) -> None:
            kept.append(self.ctx)

    clock = ManualClock()
    async with Runtime(bindings={"K": Keeper}, clock=clock, idle_timeout=1) as rt:
        await rt.env.K.get_by_name("x").keep()
        await clock.advance(1_000)
        with pytest.raises(RuntimeError, match="was evicted"):
            kept[0].storage.put("x", 1)
        with pytest.raises(RuntimeError, match="was evicted"):
            kept[0].now_ms()


async def test_closing_the_runtime_commits_writes_of_running_events() -> None:
    backend = MemoryBackend()

    class Slow(DurableObject):
        async def slow(self) -> None:
            self.ctx.storage.put("k", 1)
            await anyio.sleep_forever()

        async def read(self) -> Any:
            return await self.ctx.storage.get("k")

    failed: list[BaseException] = []

    async def call(stub: Any) -> None:
        try:
            await stub.slow()
        except RuntimeClosedError as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        async with Runtime(bindings={"S": Slow}, storage=backend) as rt:
            tg.start_soon(call, rt.env.S.get_by_name("s"))
            await anyio.wait_all_tasks_blocked()
    # The call in flight fails when the runtime closes (it does not hang).
    assert len(failed) == 1
    async with Runtime(bindings={"S": Slow}, storage=backend) as rt:
        assert await rt.env.S.get_by_name("s").read() == 1


async def test_background_writes_are_committed_every_time_the_object_goes_idle() -> (
    None
):
    clock = ManualClock()
    backend = MemoryBackend()

    class Bg(DurableObject):
        async def later(self, key: str) -> None:
            async def write() -> None:
                await clock.sleep_until(clock.now_ms() + 100)
                self.ctx.storage.put(key, True)

            self.ctx.wait_until(write())

    async with Runtime(
        bindings={"B": Bg}, storage=backend, clock=clock, idle_timeout=1
    ) as rt:
        stub = rt.env.B.get_by_name("x")
        for key in ("first", "second", "third"):
            await stub.later(key)
            await clock.advance(100)  # the background write ran; object idle
        store = backend.open(rt.env.B._storage_name, str(stub.id))
        assert sorted(
            k for k, _ in await store.list(pyobjects.storage.ListQuery())
        ) == [
            "first",
            "second",
            "third",
        ]
        await clock.advance(1_000)
        assert rt.statistics().live_objects == 0  # quiescent, so evicted


async def test_a_commit_stuck_for_30_seconds_resets_the_object() -> None:
    clock = ManualClock()
    controlled = ControlledBackend(MemoryBackend())
    controlled.hold = anyio.Event()
    async with Runtime(bindings={"C": Counter}, storage=controlled, clock=clock) as rt:
        stub = rt.env.C.get_by_name("x")
        errors: list[DurableObjectResetError] = []

        async def call() -> None:
            try:
                await stub.increment()
            except DurableObjectResetError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await clock.advance(29_999)
            assert errors == []
            await clock.advance(1)
            assert len(errors) == 1
            controlled.hold.set()  # the stuck commit finishing later is harmless
        assert "exceeded timeout which caused object to be reset" in str(errors[0])
        assert errors[0].overloaded
        assert not errors[0].retryable
        assert await rt.env.C.get_by_name("x").bump_memory() == 1  # a fresh instance
