"""KV and SQL together, through the whole runtime, against a model.

Hypothesis writes programs of events. Each event mixes KV writes, SQL writes,
``transaction_sync()`` blocks that commit or roll back, and turns (an await
that lets the batch so far commit), then returns, raises, or calls
``ctx.abort()``. Between events the program may crash the runtime and start a
fresh one on the same storage, or evict the object. The model says what must
be stored: every acknowledged event's writes (a raising handler's too: an
exception does not roll back writes), none of an aborted event's writes, and
never a part of a batch. Reads through both APIs must match it after every
event and after every crash.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyobjects
from pyobjects.storage import MemoryBackend, PostgresBackend, SQLiteBackend
from pyobjects.testing import ManualClock, crash_and_restart, evict
from tests.postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    from pyobjects.storage import StorageBackend

Step = tuple[Any, ...]
KEYS = ("a", "b", "c")


class Cell(pyobjects.DurableObject):
    """Holds a KV map and a SQL table, written by programs of steps."""

    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)"
        )

    def _apply(self, step: Step) -> None:
        storage = self.ctx.storage
        op = step[0]
        if op == "put":
            storage.put(step[1], step[2])
        elif op == "delete":
            storage.delete(step[1])
        elif op == "insert":
            storage.sql.exec(
                "INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)", step[1], step[2]
            )
        elif op == "remove":
            storage.sql.exec("DELETE FROM t WHERE k = ?", step[1])
        elif op == "sync":
            _, commits, inner = step

            def block() -> None:
                for s in inner:
                    self._apply(s)
                if not commits:
                    raise _RolledBack

            with contextlib.suppress(_RolledBack):
                storage.transaction_sync(block)
        else:  # pragma: no cover - the strategies make no other step
            raise AssertionError(op)

    async def run(self, steps: list[Step], end: str) -> None:
        for step in steps:
            if step[0] == "turn":
                await anyio.lowlevel.checkpoint()
            else:
                self._apply(step)
        if end == "raise":
            raise ValueError("the handler failed after writing")
        if end == "abort":
            self.ctx.abort("program abort")

    async def dump(self) -> tuple[dict[str, int], dict[str, int]]:
        kv = await self.ctx.storage.list()
        rows = self.ctx.storage.sql.exec("SELECT k, v FROM t ORDER BY k").raw()
        return dict(kv), {str(k): int(v) for k, v in rows}


class _RolledBack(Exception):
    pass


# -- programs ---------------------------------------------------------------

keys = st.sampled_from(KEYS)
numbers = st.integers(0, 99)
writes = st.one_of(
    st.tuples(st.just("put"), keys, numbers),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("insert"), keys, numbers),
    st.tuples(st.just("remove"), keys),
)
sync_blocks = st.tuples(
    st.just("sync"), st.booleans(), st.lists(writes, min_size=1, max_size=3)
)


@st.composite
def events(draw: st.DrawFn) -> tuple[str, list[Step], str]:
    end = draw(st.sampled_from(["return", "return", "raise", "abort"]))
    # An aborted event has no turn: all its writes are one uncommitted batch,
    # which the abort must discard whole. (With a turn, the writes before it
    # may or may not have committed when the abort comes.)
    step: st.SearchStrategy[Step] = writes | sync_blocks
    if end != "abort":
        step = step | st.just(("turn",))
    return ("event", draw(st.lists(step, max_size=6)), end)


programs = st.lists(
    events() | st.just(("crash",)) | st.just(("evict",)), min_size=1, max_size=12
)


@dataclass
class Model:
    kv: dict[str, int]
    sql: dict[str, int]

    def apply(self, step: Step) -> None:
        op = step[0]
        if op == "put":
            self.kv[step[1]] = step[2]
        elif op == "delete":
            self.kv.pop(step[1], None)
        elif op == "insert":
            self.sql[step[1]] = step[2]
        elif op == "remove":
            self.sql.pop(step[1], None)
        elif op == "sync" and step[1]:
            for s in step[2]:
                self.apply(s)


async def _execute(backend: StorageBackend, program: list[Any]) -> None:
    model = Model({}, {})
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(
            pyobjects.Runtime(
                bindings={"CELL": Cell}, storage=backend, clock=ManualClock()
            )
        )
        for item in program:
            stub = rt.env.CELL.get_by_name("cell")
            if item[0] == "crash":
                rt = await stack.enter_async_context(crash_and_restart(rt))
            elif item[0] == "evict":
                await stub.dump()  # a live instance to evict
                await evict(stub)
            else:
                _, steps, end = item
                if end == "abort":
                    with pytest.raises(pyobjects.DurableObjectResetError):
                        await stub.run(steps, end)
                elif end == "raise":
                    with pytest.raises(ValueError, match="failed after writing"):
                        await stub.run(steps, end)
                    for step in steps:
                        model.apply(step)
                else:
                    await stub.run(steps, end)
                    for step in steps:
                        model.apply(step)
            stub = rt.env.CELL.get_by_name("cell")  # a reset breaks old stubs
            assert await stub.dump() == (model.kv, model.sql), item


MODEL_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@MODEL_SETTINGS
@given(program=programs)
def test_memory_backend_matches_the_model(program: list[Any]) -> None:
    anyio.run(_execute, MemoryBackend(), program)


@MODEL_SETTINGS
@given(program=programs)
def test_sqlite_backend_matches_the_model(program: list[Any]) -> None:
    directory = tempfile.mkdtemp(prefix="pyobjects-model-")
    try:
        anyio.run(_execute, SQLiteBackend(directory, synchronous="off"), program)
    finally:
        shutil.rmtree(directory)


@settings(MODEL_SETTINGS, max_examples=30)
@given(program=programs)
def test_postgres_backend_matches_the_model(program: list[Any]) -> None:
    dsn = require_postgres()
    schema = new_schema()
    try:
        anyio.run(_execute, PostgresBackend(dsn, schema=schema), program)
    finally:
        drop_schema(dsn, schema)
