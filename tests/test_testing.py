"""The helpers in pyobjects.testing that exist so far."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import pyobjects
from pyobjects import DurableObject, Runtime
from pyobjects.testing import (
    ManualClock,
    evict,
    list_durable_object_ids,
    run_in_durable_object,
)

if TYPE_CHECKING:
    from pyobjects.storage import MemoryBackend, StorageBackend


class Note(DurableObject):
    built = 0

    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        type(self).built += 1
        self.memo: list[str] = []

    async def write(self, text: str) -> None:
        self.memo.append(text)
        self.ctx.storage.put("text", text)

    async def read(self) -> tuple[Any, list[str]]:
        return await self.ctx.storage.get("text"), self.memo

    async def nap(self) -> None:
        await anyio.sleep_forever()


async def test_evict_drops_the_instance_and_keeps_storage(
    backend: StorageBackend,
) -> None:
    Note.built = 0
    async with Runtime(bindings={"N": Note}, storage=backend) as rt:
        stub = rt.env.N.get_by_name("a")
        await stub.write("hello")
        await evict(stub)
        assert await stub.read() == ("hello", [])
        assert Note.built == 2
        with pytest.raises(RuntimeError, match="no live instance"):
            await evict(rt.env.N.get_by_name("never-called"))


async def test_evict_refuses_a_busy_object() -> None:
    async with Runtime(bindings={"N": Note}) as rt:
        stub = rt.env.N.get_by_name("a")
        async with anyio.create_task_group() as tg:
            tg.start_soon(stub.nap)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match="still handling events"):
                await evict(stub)
            tg.cancel_scope.cancel()


async def test_list_durable_object_ids(backend: StorageBackend) -> None:
    async with Runtime(bindings={"N": Note}, storage=backend) as rt:
        ns = rt.env.N
        assert await list_durable_object_ids(ns) == []
        await ns.get_by_name("b").read()  # no data: not listed
        await ns.get_by_name("a").write("x")
        unique = ns.new_unique_id()
        await ns.get(unique).write("y")
        ids = await list_durable_object_ids(ns)
        assert sorted(map(str, ids)) == sorted([str(ns.id_from_name("a")), str(unique)])
        assert ids == sorted(ids, key=str)
        with pytest.raises(TypeError, match="DurableObjectNamespace"):
            await list_durable_object_ids("N")  # type: ignore[arg-type]


async def test_run_in_durable_object_checks_its_arguments() -> None:
    async with Runtime(bindings={"N": Note}) as rt:
        stub = rt.env.N.get_by_name("a")
        with pytest.raises(TypeError, match="DurableObjectStub"):
            await run_in_durable_object("stub", lambda o, c: o)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            await run_in_durable_object(stub, 5)  # type: ignore[arg-type]

        async def inside(obj: Note, ctx: pyobjects.DurableObjectState) -> Note:
            return obj

        instance = await run_in_durable_object(stub, inside)
        assert isinstance(instance, Note)  # the instance itself, not a copy


async def test_manual_clock() -> None:
    clock = ManualClock(start_ms=1_000)
    assert clock.now_ms() == 1_000
    woke: list[int] = []

    async def sleeper(at: int) -> None:
        await clock.sleep_until(at)
        woke.append(clock.now_ms())

    async with anyio.create_task_group() as tg:
        for at in (3_000, 2_000, 500):
            tg.start_soon(sleeper, at)
        await clock.advance(500)
        assert woke == [1_000]  # a past deadline returns at once
        await clock.advance(2_000)
        assert woke == [1_000, 2_000, 3_000]  # in deadline order, at their times
    assert clock.now_ms() == 3_500
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)
    with pytest.raises(TypeError, match="number"):
        await clock.advance("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="start_ms"):
        ManualClock(start_ms=-5)
    assert "3500" in repr(clock)


async def test_pytest_plugin_fixtures(
    manual_clock: ManualClock, memory_backend: MemoryBackend
) -> None:
    async with Runtime(
        bindings={"N": Note}, clock=manual_clock, storage=memory_backend
    ) as rt:
        await rt.env.N.get_by_name("a").write("x")
        await manual_clock.advance(60_000)
        assert rt.statistics().live_objects == 0
    assert await memory_backend.list_object_ids("N")
