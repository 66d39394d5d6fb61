"""Statements that make SQLite end the whole transaction never tear a batch (#11).

``INSERT OR ROLLBACK``, ``UPDATE OR ROLLBACK``, a column declared ``ON CONFLICT
ROLLBACK`` and ``RAISE(ROLLBACK, ...)`` in a trigger roll back the object's
SQLite transaction, not only the statement. Caught by the user, they used to
discard the batch's SQL writes while its KV writes committed alone. Now the
object resets when the transaction held writes of the batch: every caller of
the batch gets an error flagged ``durable_object_reset``, nothing of the batch
survives, and what was acknowledged before stays.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import pyobjects
from pyobjects import DurableObject, DurableObjectResetError, Runtime, SqlError
from pyobjects.testing import run_in_durable_object
from tests.helpers import ControlledBackend

if TYPE_CHECKING:
    from pyobjects.storage import StorageBackend

# (statement preparing the conflict, statement that rolls the transaction back)
FORMS = {
    "insert_or_rollback": (
        "INSERT INTO t VALUES (3, 'c')",
        "INSERT OR ROLLBACK INTO t VALUES (3, 'again')",
    ),
    "update_or_rollback": (
        "INSERT INTO t VALUES (3, 'c')",
        "UPDATE OR ROLLBACK t SET id = 3 WHERE id = 2",
    ),
    "unique_on_conflict_rollback": (
        "INSERT INTO u VALUES (7)",
        "INSERT INTO u VALUES (7)",
    ),
    "raise_rollback_in_trigger": (None, "INSERT INTO guarded VALUES (-1)"),
}
forms = pytest.mark.parametrize("form", sorted(FORMS))


class Ledger(DurableObject):
    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        sql = ctx.storage.sql
        sql.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        sql.exec("CREATE TABLE IF NOT EXISTS u (x UNIQUE ON CONFLICT ROLLBACK)")
        sql.exec("CREATE TABLE IF NOT EXISTS guarded (x)")
        sql.exec(
            "CREATE TRIGGER IF NOT EXISTS refuse BEFORE INSERT ON guarded"
            " WHEN NEW.x < 0 BEGIN SELECT RAISE(ROLLBACK, 'negative'); END"
        )
        kv = ctx.storage.kv
        kv.put("starts", (kv.get("starts") or 0) + 1)

    async def acknowledged(self) -> None:
        self.ctx.storage.sql.exec("INSERT INTO t VALUES (1, 'a')")
        self.ctx.storage.put("acked", 1)

    def _batch_then(self, form: str) -> str:
        """Write to KV and SQL, then run the form's statement, catching its error."""
        sql = self.ctx.storage.sql
        self.ctx.storage.kv.put("k", 1)
        sql.exec("INSERT INTO t VALUES (2, 'b')")
        prepare, statement = FORMS[form]
        if prepare is not None:
            sql.exec(prepare)
        with contextlib.suppress(SqlError):  # as the SQL guide advises
            sql.exec(statement)
        return "survived"

    async def torn(self, form: str) -> str:
        return self._batch_then(form)

    async def torn_in_transaction_sync(self, form: str) -> str:
        return self.ctx.storage.transaction_sync(lambda: self._batch_then(form))

    async def torn_in_transaction(self, form: str) -> str:
        async def closure(txn: Any) -> str:
            return self._batch_then(form)

        return await self.ctx.storage.transaction(closure)

    async def write(self) -> None:
        self.ctx.storage.sql.exec("INSERT INTO t VALUES (5, 'e')")
        self.ctx.storage.put("other", 1)

    async def only_the_statement(self, form: str) -> str:
        """The transaction holds nothing else: only the statement is undone."""
        prepare, statement = FORMS[form]
        sql = self.ctx.storage.sql
        sql.exec("INSERT INTO t VALUES (2, 'b')")
        if prepare is not None:
            sql.exec(prepare)
        await self.ctx.storage.sync()  # committed: the transaction ends
        self.ctx.storage.put("k", 1)
        try:
            self.ctx.storage.sql.exec(statement)
        except SqlError as exc:
            return type(exc).__name__
        return "no error"

    async def state(self) -> dict[str, Any]:
        storage = self.ctx.storage
        return {
            "acked": await storage.get("acked"),
            "k": await storage.get("k"),
            "other": await storage.get("other"),
            "starts": await storage.get("starts"),
            "t": [
                row[0] for row in storage.sql.exec("SELECT id FROM t ORDER BY id").raw()
            ],
            "u": [row[0] for row in storage.sql.exec("SELECT x FROM u").raw()],
        }


async def _expect_reset(call: Any) -> DurableObjectResetError:
    with pytest.raises(DurableObjectResetError) as info:
        await call
    assert info.value.durable_object_reset is True
    assert "SQLite rolled back the Durable Object's transaction" in str(info.value)
    return info.value


@forms
@pytest.mark.parametrize(
    "method", ["torn", "torn_in_transaction_sync", "torn_in_transaction"]
)
async def test_rollback_after_acknowledged_writes_keeps_them(
    backend: StorageBackend, form: str, method: str
) -> None:
    async with Runtime(bindings={"L": Ledger}, storage=backend) as rt:
        stub = rt.env.L.get_by_name("x")
        await stub.acknowledged()
        await _expect_reset(getattr(stub, method)(form))
        state = await rt.env.L.get_by_name("x").state()
    # The acknowledged event is intact; nothing of the torn batch survives
    # (neither its KV write nor its SQL rows).
    assert state == {
        "acked": 1,
        "k": None,
        "other": None,
        "starts": 2,
        "t": [1],
        "u": [],
    }


@forms
async def test_rollback_in_the_first_event_drops_the_constructors_writes(
    backend: StorageBackend, form: str
) -> None:
    async with Runtime(bindings={"L": Ledger}, storage=backend) as rt:
        await _expect_reset(rt.env.L.get_by_name("x").torn(form))
        state = await rt.env.L.get_by_name("x").state()
    # The first instance's constructor (tables, starts = 1) was part of the
    # torn batch: the next instance starts from nothing.
    assert state["starts"] == 1
    assert (state["k"], state["t"], state["u"]) == (None, [], [])


@forms
async def test_rollback_resets_every_event_of_the_batch(
    backend: StorageBackend, form: str
) -> None:
    controlled = ControlledBackend(backend)
    async with Runtime(bindings={"L": Ledger}, storage=controlled) as rt:
        stub = rt.env.L.get_by_name("x")
        await stub.acknowledged()
        controlled.hold = anyio.Event()  # the next commit waits
        errors: list[DurableObjectResetError] = []

        async def write() -> None:
            try:
                await stub.write()
            except DurableObjectResetError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            # write()'s batch is being committed; its SQL is still in the
            # open transaction when the rolling-back statement runs.
            await _expect_reset(stub.torn(form))
            controlled.hold.set()
        assert len(errors) == 1
        assert errors[0].durable_object_reset is True
        controlled.hold = None
        state = await rt.env.L.get_by_name("x").state()
    assert (state["acked"], state["other"], state["k"]) == (1, None, None)
    assert state["t"] == [1]


@forms
async def test_rollback_of_a_lone_statement_is_an_ordinary_error(
    backend: StorageBackend, form: str
) -> None:
    async with Runtime(bindings={"L": Ledger}, storage=backend) as rt:
        stub = rt.env.L.get_by_name("x")
        await stub.acknowledged()
        # Nothing else in the transaction: the statement's error reaches the
        # code that caught it, the object carries on and its KV write commits.
        assert await stub.only_the_statement(form) == "SqlError"
        state = await stub.state()
    assert (state["acked"], state["k"]) == (1, 1)


async def test_savepoints_come_back_after_a_lone_rollback(
    backend: StorageBackend,
) -> None:
    async with Runtime(bindings={"L": Ledger}, storage=backend) as rt:
        stub = rt.env.L.get_by_name("x")
        await stub.acknowledged()

        async def body(obj: Any, ctx: pyobjects.DurableObjectState) -> Any:
            sql = ctx.storage.sql

            def fn() -> None:
                with pytest.raises(SqlError, match="negative"):
                    sql.exec("INSERT INTO guarded VALUES (-1)")
                sql.exec("INSERT INTO t VALUES (9, 'z')")
                raise ValueError("undo")

            with pytest.raises(ValueError, match="undo"):
                ctx.storage.transaction_sync(fn)
            return [row[0] for row in sql.exec("SELECT id FROM t").raw()]

        # The savepoint SQLite dropped is made again, so the INSERT after the
        # failed statement is rolled back with the rest of fn.
        assert await run_in_durable_object(stub, body) == [1]
