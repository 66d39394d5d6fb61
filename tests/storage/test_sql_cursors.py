"""Cursors are lazy, as in workerd (reference §8.2, #11)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    Runtime,
    SqlError,
    SqlTimeoutError,
)
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import run_in_durable_object
from tests.helpers import ControlledBackend

if TYPE_CHECKING:
    from pathlib import Path

    from pyobjects.storage import StorageBackend

FOREVER = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
)


class Plain(DurableObject):
    async def touch(self) -> None:
        self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS z (a)")


async def _run(stub: Any, fn: Any) -> Any:
    async def body(obj: Any, ctx: pyobjects.DurableObjectState) -> Any:
        return await fn(ctx.storage)

    return await run_in_durable_object(stub, body)


async def _fill(storage: Any, rows: int = 200) -> None:
    storage.sql.exec("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    storage.sql.exec(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
        " INSERT INTO t SELECT x FROM c",
        rows,
    )


async def test_rows_read_grows_as_the_cursor_is_read(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        async def body(s: Any) -> None:
            await _fill(s)
            cursor = s.sql.exec("SELECT id FROM t ORDER BY id")
            assert cursor.rows_read == 0
            assert next(cursor) == {"id": 1}
            assert cursor.rows_read == 1
            assert [next(cursor)["id"] for _ in range(99)][-1] == 100
            assert cursor.rowsRead == 100
            assert len(cursor.to_array()) == 100
            assert cursor.rows_read == 200
            assert cursor.to_array() == []
            assert cursor.rows_read == 200

        await _run(rt.env.P.get_by_name("x"), body)


async def test_a_cursor_produces_rows_only_when_asked(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        async def body(s: Any) -> list[Any]:
            # An endless result: only a lazy cursor can return its first rows.
            cursor = s.sql.exec(FOREVER)
            first = [next(cursor)["x"] for _ in range(3)]
            assert cursor.rows_read == 3
            return first + [
                row[0] for row, _ in zip(cursor.raw(), range(2), strict=False)
            ]

        assert await _run(rt.env.P.get_by_name("x"), body) == [1, 2, 3, 4, 5]


async def test_interleaved_cursors(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        async def body(s: Any) -> None:
            await _fill(s, 150)
            query = "SELECT id FROM t ORDER BY id"
            a = s.sql.exec(query)
            b = s.sql.exec(query)  # the same SQL text, while `a` is open
            c = s.sql.exec("SELECT id FROM t ORDER BY id DESC")
            seen = [(next(a)["id"], next(b)["id"], next(c)["id"]) for _ in range(100)]
            assert seen[0] == (1, 1, 150)
            assert seen[99] == (100, 100, 51)
            assert (a.rows_read, b.rows_read, c.rows_read) == (100, 100, 100)
            assert [row["id"] for row in b][-1] == 150
            assert len(a.to_array()) == 50

        await _run(rt.env.P.get_by_name("x"), body)


async def test_an_in_list_is_not_a_write(backend: StorageBackend) -> None:
    controlled = ControlledBackend(backend)
    async with Runtime(bindings={"P": Plain}, storage=controlled) as rt:
        stub = rt.env.P.get_by_name("x")
        await _run(stub, _fill)
        commits = len(controlled.commits)

        async def body(s: Any) -> tuple[int, int, list[Any]]:
            cursor = s.sql.exec("SELECT id FROM t WHERE id IN (1, 3, 5, 7) ORDER BY id")
            rows = [row[0] for row in cursor.raw()]
            return cursor.rows_written, cursor.rows_read, rows

        assert await _run(stub, body) == (0, 4, [1, 3, 5, 7])
        assert len(controlled.commits) == commits  # a read makes no commit


async def test_open_cursor_across_a_commit_keeps_its_rows(
    backend: StorageBackend,
) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        stub = rt.env.P.get_by_name("x")
        await _run(stub, _fill)

        async def body(s: Any) -> list[int]:
            cursor = s.sql.exec("SELECT id FROM t ORDER BY id")
            ids = [next(cursor)["id"]]
            s.sql.exec("INSERT INTO t VALUES (1000)")
            await s.sync()  # the write commits while the cursor is open
            ids += [row["id"] for row in cursor]
            return ids

        ids = await _run(stub, body)
        assert ids[:2] == [1, 2]
        assert len(ids) in (200, 201)  # SQLite may or may not show the new row


async def test_open_cursor_and_a_bookmark(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        stub = rt.env.P.get_by_name("x")
        await _run(stub, _fill)

        async def body(s: Any) -> int:
            cursor = s.sql.exec("SELECT id FROM t ORDER BY id")
            next(cursor)
            # Taking a bookmark checkpoints the WAL, which an unfinished
            # statement would block: the cursor is read to the end first.
            await s.get_current_bookmark()
            s.delete_all()  # so is dropping the tables under it
            return len(cursor.to_array())

        assert await _run(stub, body) == 199


async def test_cursor_after_a_reset(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        stub = rt.env.P.get_by_name("x")
        await _run(stub, _fill)

        async def body(s: Any) -> None:
            cursor = s.sql.exec("SELECT id FROM t")
            next(cursor)
            s.put("k", 1)
            s._owner.reset(DurableObjectResetError("test reset"))
            with pytest.raises(DurableObjectResetError):
                cursor.to_array()

        with pytest.raises(DurableObjectResetError):
            await _run(stub, body)


async def test_one_on_a_lazy_cursor(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        async def body(s: Any) -> None:
            await _fill(s)
            assert s.sql.exec("SELECT id FROM t WHERE id = 7").one() == {"id": 7}
            with pytest.raises(SqlError, match="multiple results"):
                s.sql.exec(FOREVER).one()
            with pytest.raises(SqlError, match="no results"):
                s.sql.exec("SELECT id FROM t WHERE id = 0").one()

        await _run(rt.env.P.get_by_name("x"), body)


async def test_writes_run_to_the_end_at_exec(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        async def body(s: Any) -> None:
            await _fill(s, 10)
            cursor = s.sql.exec("DELETE FROM t WHERE id > 5 RETURNING id")
            # Every row is deleted although none was read yet.
            assert cursor.rows_written == 5
            assert s.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 5}
            assert sorted(row["id"] for row in cursor) == [6, 7, 8, 9, 10]

        await _run(rt.env.P.get_by_name("x"), body)


async def test_cursor_whose_connection_the_backend_closed(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path, max_open_connections=1)
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        stub = rt.env.P.get_by_name("x")
        await _run(stub, _fill)
        other = rt.env.P.get_by_name("y")

        async def body(s: Any) -> tuple[int, int]:
            cursor = s.sql.exec("SELECT id FROM t ORDER BY id")
            next(cursor)
            # Its database pushes this one's out: the cursor is read to the
            # end first (an unfinished statement would keep the file busy).
            await other.touch()
            rest = len(cursor.to_array())
            # exec() reopens the database.
            count = s.sql.exec("SELECT count(*) AS n FROM t").one()["n"]
            return rest, count

        assert await _run(stub, body) == (199, 200)


async def test_a_cursor_that_fails_while_settled_raises_when_read(
    backend: StorageBackend,
) -> None:
    async with Runtime(
        bindings={"P": Plain}, storage=backend, sql_statement_timeout=0.001
    ) as rt:

        async def body(s: Any) -> None:
            cursor = s.sql.exec(FOREVER)
            assert next(cursor) == {"x": 1}
            s.put("k", 1)
            await s.sync()  # the commit reads the endless cursor: time limit
            # The rows already taken come first, then the error.
            with pytest.raises(SqlTimeoutError):
                for _ in cursor:
                    pass
            assert cursor.rows_read == 64  # the rows taken by exec()
            assert "rows_read=" in repr(cursor)

        await _run(rt.env.P.get_by_name("x"), body)


async def test_one_and_returning_on_the_hot_path(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        async def body(s: Any) -> None:
            await _fill(s, 100)
            cursor = s.sql.exec("SELECT id FROM t ORDER BY id")
            for _ in range(99):
                next(cursor)
            assert cursor.one() == {"id": 100}  # the last row of a lazy cursor
            for value in (1000, 1001):  # the second run takes the hot path
                row = s.sql.exec("INSERT INTO t VALUES (?) RETURNING id", value).one()
                assert row == {"id": value}

        await _run(rt.env.P.get_by_name("x"), body)
