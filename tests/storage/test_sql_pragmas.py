"""The PRAGMA allowlist and ``PRAGMA foreign_keys`` (reference §8.3, #11)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import pyobjects
from pyobjects import DurableObject, Runtime, SqlError
from pyobjects.testing import evict, run_in_durable_object

if TYPE_CHECKING:
    from pyobjects.storage import StorageBackend


class Plain(DurableObject):
    pass


SCHEMA = (
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
    "CREATE TABLE child (p INTEGER REFERENCES parent (id), note TEXT);"
    "CREATE INDEX child_by_note ON child (note);"
)


async def _run(stub: Any, fn: Any) -> Any:
    async def body(obj: Any, ctx: pyobjects.DurableObjectState) -> Any:
        return fn(ctx.storage.sql)

    return await run_in_durable_object(stub, body)


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("PRAGMA data_version", None),
        ("PRAGMA table_info(child)", {"name": "p"}),
        ("PRAGMA table_xinfo(child)", {"name": "p", "hidden": 0}),
        ("PRAGMA quick_check", {"quick_check": "ok"}),
        ("PRAGMA quick_check(child)", {"quick_check": "ok"}),
        ("PRAGMA index_info(child_by_note)", {"name": "note"}),
        ("PRAGMA index_list(child)", {"name": "child_by_note"}),
        ("PRAGMA index_xinfo(child_by_note)", {"name": "note"}),
        ("PRAGMA foreign_key_list(child)", {"table": "parent", "from": "p"}),
        ("PRAGMA foreign_key_check", None),
        ("PRAGMA foreign_key_check(child)", None),
        ("PRAGMA optimize", None),
    ],
)
async def test_allowlisted_pragmas_answer(
    backend: StorageBackend, query: str, first: dict[str, Any] | None
) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        def fn(sql: Any) -> list[dict[str, Any]]:
            sql.exec(SCHEMA)
            return sql.exec(query).to_array()  # type: ignore[no-any-return]

        rows = await _run(rt.env.P.get_by_name("x"), fn)
    if first is not None:
        assert rows
        assert first.items() <= rows[0].items()


async def test_foreign_keys_off_outside_a_transaction_and_check(
    backend: StorageBackend,
) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        stub = rt.env.P.get_by_name("x")
        await _run(stub, lambda sql: sql.exec(SCHEMA))  # committed

        def off(sql: Any) -> list[dict[str, Any]]:
            # No write is pending, so the setting takes effect.
            sql.exec("PRAGMA foreign_keys = OFF")
            assert sql.exec("PRAGMA foreign_keys").one() == {"foreign_keys": 0}
            sql.exec("INSERT INTO child VALUES (42, 'orphan')")
            return sql.exec("PRAGMA foreign_key_check").to_array()  # type: ignore[no-any-return]

        assert await _run(stub, off) == [
            {"table": "child", "rowid": 1, "parent": "parent", "fkid": 0}
        ]
        # Still off for this instance's next events (no transaction is open).
        await _run(stub, lambda sql: sql.exec("INSERT INTO child VALUES (43, 'x')"))

        def on(sql: Any) -> Any:
            sql.exec("PRAGMA foreign_keys = ON")
            with pytest.raises(SqlError, match="FOREIGN KEY constraint failed"):
                sql.exec("INSERT INTO child VALUES (44, 'y')")
            return sql.exec("SELECT count(*) AS n FROM child").one()

        assert await _run(stub, on) == {"n": 2}

        # A new instance starts with foreign keys on, as in Cloudflare.
        await _run(stub, lambda sql: sql.exec("PRAGMA foreign_keys = OFF"))
        await evict(stub)
        value = await _run(stub, lambda sql: sql.exec("PRAGMA foreign_keys").one())
        assert value == {"foreign_keys": 1}


async def test_foreign_keys_pragma_inside_a_transaction_does_nothing(
    backend: StorageBackend,
) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        def fn(sql: Any) -> Any:
            sql.exec(SCHEMA)  # pending: the object's transaction is open
            sql.exec("PRAGMA foreign_keys = OFF")  # SQLite ignores it now
            with pytest.raises(SqlError, match="FOREIGN KEY constraint failed"):
                sql.exec("INSERT INTO child VALUES (42, 'orphan')")
            return sql.exec("PRAGMA foreign_keys").one()

        assert await _run(rt.env.P.get_by_name("x"), fn) == {"foreign_keys": 1}


async def test_foreign_keys_setting_survives_a_reopened_connection(
    tmp_path: Any,
) -> None:
    from pyobjects.storage import SQLiteBackend

    backend = SQLiteBackend(tmp_path, max_open_connections=1)
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        stub = rt.env.P.get_by_name("x")
        await _run(stub, lambda sql: sql.exec(SCHEMA))
        await _run(stub, lambda sql: sql.exec("PRAGMA foreign_keys = OFF"))
        # Another object's database pushes this one's connection out.
        await _run(
            rt.env.P.get_by_name("y"), lambda sql: sql.exec("CREATE TABLE z (a)")
        )
        value = await _run(stub, lambda sql: sql.exec("PRAGMA foreign_keys").one())
        assert value == {"foreign_keys": 0}
