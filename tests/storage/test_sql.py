"""The SQL API (reference §5.2-5.3, §8.1-8.5) on every built-in backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    Runtime,
    SqlError,
    StorageError,
    TransactionError,
)
from pyobjects.storage import MemoryBackend, Storage, StorageBackend
from pyobjects.testing import evict, list_durable_object_ids, run_in_durable_object
from tests.helpers import ControlledBackend

T = TypeVar("T")


class Plain(DurableObject):
    pass


Body = Callable[[Storage], Awaitable[T]]


class Harness:
    def __init__(self, rt: Runtime, name: str = "obj") -> None:
        self.rt = rt
        self.stub = rt.env.P.get_by_name(name)

    async def run(self, body: Body[T]) -> T:
        async def inside(obj: Any, ctx: pyobjects.DurableObjectState) -> T:
            return await body(ctx.storage)

        return await run_in_durable_object(self.stub, inside)

    def other(self, name: str) -> Harness:
        return Harness(self.rt, name)


@pytest.fixture
async def h(backend: StorageBackend) -> AsyncIterator[Harness]:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        yield Harness(rt)


def sql_error(body: Callable[[], object]) -> SqlError:
    with pytest.raises(SqlError) as info:
        body()
    return info.value


# -- exec and cursors -----------------------------------------------------------


async def test_exec_runs_at_call_time_and_persists(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        h = Harness(rt)

        async def body(s: Storage) -> None:
            s.sql.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            s.sql.exec("INSERT INTO t (v) VALUES (?)", "a")  # cursor never read
            s.sql.exec("INSERT INTO t (v) VALUES (?), (?)", "b", "c")

        await h.run(body)
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        rows = await Harness(rt).run(
            lambda s: _ret(s.sql.exec("SELECT v FROM t ORDER BY id").to_array())
        )
        assert rows == [{"v": "a"}, {"v": "b"}, {"v": "c"}]


async def _ret(value: T) -> T:
    return value


async def test_several_statements_bindings_apply_to_last(h: Harness) -> None:
    async def body(s: Storage) -> None:
        cursor = s.sql.exec(
            "CREATE TABLE t (a); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);"
            " SELECT a FROM t WHERE a >= ? ORDER BY a",
            1,
        )
        assert cursor.to_array() == [{"a": 1}, {"a": 2}]
        # A semicolon in a string, a comment or a trigger body does not split.
        s.sql.exec(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;"
            " INSERT INTO t VALUES (';'); -- a comment; still one\n"
            "SELECT count(*) AS n FROM t"
        )
        assert s.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 3}
        error = sql_error(lambda: s.sql.exec("SELECT ?; SELECT ?", 1))
        assert str(error) == (
            "When executing multiple SQL statements in a single call, only the last "
            "statement can have parameters."
        )

    await h.run(body)


@pytest.mark.parametrize("query", ["", "   ", "-- only a comment", "/* x */ ;"])
async def test_no_statement(h: Harness, query: str) -> None:
    async def body(s: Storage) -> None:
        error = sql_error(lambda: s.sql.exec(query))
        assert str(error) == "SQL code did not contain a statement."

    await h.run(body)


async def test_trailing_comment_runs_earlier_statements_then_fails(h: Harness) -> None:
    async def body(s: Storage) -> None:
        error = sql_error(lambda: s.sql.exec("CREATE TABLE t (a); -- done"))
        assert str(error) == "SQL code did not contain a statement."
        assert s.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 0}

    await h.run(body)


async def test_stray_semicolon_stops_the_statements_after_it(h: Harness) -> None:
    async def body(s: Storage) -> None:
        error = sql_error(
            lambda: s.sql.exec("CREATE TABLE t (a);; INSERT INTO t VALUES (1)")
        )
        assert str(error) == "SQL code did not contain a statement."
        assert s.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 0}
        error = sql_error(lambda: s.sql.exec("INSERT INTO t VALUES (2); ;"))
        assert str(error) == "SQL code did not contain a statement."
        assert s.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 1}
        assert s.sql.exec("SELECT count(*) AS n FROM t;  \n").one() == {"n": 1}

    await h.run(body)


async def test_cursor_members(h: Harness) -> None:
    async def body(s: Storage) -> None:
        sql = s.sql
        sql.exec("CREATE TABLE t (a, b)")
        sql.exec("INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'z')")
        cursor = sql.exec("SELECT a, b FROM t ORDER BY a")
        assert cursor.column_names == ["a", "b"]
        assert cursor.columnNames == ["a", "b"]  # type: ignore[attr-defined]
        assert cursor.rows_read == cursor.rowsRead == 0  # type: ignore[attr-defined]
        assert cursor.rows_written == 0
        assert next(cursor) == {"a": 1, "b": "x"}
        assert next(cursor.raw()) == [2, "y"]  # raw() shares the position
        assert cursor.next() == {"done": False, "value": {"a": 3, "b": "z"}}
        assert cursor.next() == {"done": True}
        assert cursor.rows_read == 3
        assert cursor.to_array() == []
        assert cursor.column_names == ["a", "b"]  # still readable when exhausted
        assert [row["a"] for row in sql.exec("SELECT a FROM t")] == [1, 2, 3]
        assert list(sql.exec("SELECT a, b FROM t WHERE a = 1").raw()) == [[1, "x"]]
        assert sql.exec("SELECT a FROM t").toArray() == [{"a": 1}, {"a": 2}, {"a": 3}]  # type: ignore[attr-defined]
        dup = sql.exec("SELECT 1 AS c, 2 AS c")
        assert dup.column_names == ["c", "c"]
        assert dup.one() == {"c": 2}  # the last value wins
        written = sql.exec("UPDATE t SET b = 'w' WHERE a >= 2")
        assert (written.rows_written, written.rows_read) == (2, 0)
        assert sql.exec("DELETE FROM t").rowsWritten == 3  # type: ignore[attr-defined]

    await h.run(body)


async def test_one_errors(h: Harness) -> None:
    async def body(s: Storage) -> None:
        s.sql.exec("CREATE TABLE t (a)")
        none = sql_error(lambda: s.sql.exec("SELECT a FROM t").one())
        assert str(none) == (
            "Expected exactly one result from SQL query, but got no results."
        )
        s.sql.exec("INSERT INTO t VALUES (1), (2)")
        many = sql_error(lambda: s.sql.exec("SELECT a FROM t").one())
        assert str(many) == (
            "Expected exactly one result from SQL query, but got multiple results."
        )

    await h.run(body)


# -- types and bindings -----------------------------------------------------------


async def test_type_mapping(h: Harness) -> None:
    async def body(s: Storage) -> None:
        row = s.sql.exec(
            "SELECT ? AS n, ? AS i, ? AS f, ? AS t, ? AS b, typeof(?) AS ti,"
            " typeof(?) AS tf, ? / 2 AS div",
            None,
            2**62,
            1.5,
            "héllo",
            b"\x00\xff",
            7,
            7.0,
            3,
        ).one()
        assert row == {
            "n": None,
            "i": 2**62,
            "f": 1.5,
            "t": "héllo",
            "b": b"\x00\xff",
            "ti": "integer",  # Python ints bind as INTEGER (Cloudflare: REAL)
            "tf": "real",
            "div": 1,
        }
        assert type(row["b"]) is bytes
        assert s.sql.exec("SELECT ? AS v", bytearray(b"ab")).one() == {"v": b"ab"}
        assert s.sql.exec("SELECT ? AS v", True).one() == {"v": 1}

    await h.run(body)


async def test_bad_bindings(h: Harness) -> None:
    async def body(s: Storage) -> None:
        with pytest.raises(TypeError, match="binding 2 is list"):
            s.sql.exec("SELECT ?, ?", 1, [2])
        with pytest.raises(ValueError, match="64-bit INTEGER"):
            s.sql.exec("SELECT ?", 2**63)
        with pytest.raises(ValueError, match="lone surrogate"):
            s.sql.exec("SELECT ?", "\ud800")
        for args in [(), (1, 2)]:
            error = sql_error(lambda a=args: s.sql.exec("SELECT ?", *a))  # type: ignore[misc]
            assert str(error) == "Wrong number of parameter bindings for SQL query."
        with pytest.raises(TypeError, match="must be a str"):
            s.sql.exec(b"SELECT 1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be a str, not list"):
            s.sql.exec(["SELECT 1"])  # type: ignore[arg-type]

    await h.run(body)


async def test_sql_error_carries_sqlite_message_and_code(h: Harness) -> None:
    async def body(s: Storage) -> None:
        s.sql.exec("CREATE TABLE t (a INTEGER PRIMARY KEY)")
        s.sql.exec("INSERT INTO t VALUES (1)")
        error = sql_error(lambda: s.sql.exec("INSERT INTO t VALUES (1)"))
        assert str(error) == "UNIQUE constraint failed: t.a: SQLITE_CONSTRAINT"
        assert error.code == "SQLITE_CONSTRAINT"
        assert error.extended_code == "SQLITE_CONSTRAINT_PRIMARYKEY"
        assert error.sqlite_message == "UNIQUE constraint failed: t.a"
        assert isinstance(error.__cause__, Exception)
        assert isinstance(error, StorageError)
        syntax = sql_error(lambda: s.sql.exec("SELEC 1"))
        assert str(syntax) == 'near "SELEC": syntax error: SQLITE_ERROR'
        mismatch = sql_error(lambda: s.sql.exec("INSERT INTO t VALUES ('x')"))
        assert str(mismatch) == "datatype mismatch: SQLITE_MISMATCH"

    await h.run(body)


async def test_database_size(h: Harness) -> None:
    async def body(s: Storage) -> None:
        sql = s.sql
        (page_size,) = sql.exec("PRAGMA page_size").raw()
        size = sql.database_size
        assert size == sql.databaseSize  # type: ignore[attr-defined]
        assert size % page_size[0] == 0
        sql.exec("CREATE TABLE t (a)")
        sql.exec("INSERT INTO t VALUES (randomblob(100000))")
        grown = sql.database_size
        assert grown >= size + 100_000
        sql.exec("DELETE FROM t")
        assert sql.database_size < grown  # freed pages do not count

    await h.run(body)


# -- what is refused ---------------------------------------------------------------

AUTH = "not authorized: SQLITE_AUTH"
TXN = (
    "To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or "
    "SAVEPOINT statements."
)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("BEGIN", TXN),
        ("BEGIN TRANSACTION", TXN),
        ("COMMIT", TXN),
        ("ROLLBACK", TXN),
        ("SAVEPOINT sp", TXN),
        ("RELEASE sp", TXN),
        ("ATTACH DATABASE 'other.db' AS other", AUTH),
        ("DETACH DATABASE other", AUTH),
        ("CREATE TEMP TABLE x (a)", AUTH),
        ("CREATE TEMPORARY VIEW v AS SELECT 1", AUTH),
        ("CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", AUTH),
        ("VACUUM", ""),  # refused one way or another (ATTACH, or inside a txn)
        ("SELECT * FROM _cf_KV", "access to _cf_KV.key is prohibited: SQLITE_AUTH"),
        ("SELECT * FROM _CF_metadata", "access to _cf_METADATA.key is prohibited"),
        ("INSERT INTO _cf_KV VALUES (x'00', x'00')", AUTH),
        ("DELETE FROM _cf_METADATA", AUTH),
        ("DROP TABLE _cf_KV", AUTH),
        ("CREATE TABLE _cf_mine (a)", AUTH),
        ("CREATE INDEX i ON _cf_KV (value)", AUTH),
        ("CREATE INDEX _cf_i ON t (a)", AUTH),
        ("ALTER TABLE t RENAME TO _cf_t", AUTH),
        ('ALTER TABLE t RENAME TO "_CF_T"', AUTH),
        ("CREATE VIEW _cf_v AS SELECT 1", AUTH),
        ("PRAGMA user_version", AUTH),
        ("PRAGMA user_version = 3", AUTH),
        ("PRAGMA journal_mode = DELETE", AUTH),
        ("PRAGMA page_size = 8192", AUTH),
        ("PRAGMA writable_schema = 1", AUTH),
        ("PRAGMA foreign_keys = maybe", AUTH),
        ("PRAGMA table_info(_cf_KV)", AUTH),
        ("PRAGMA index_list", AUTH),
        ("SELECT sqlite_version()", "not authorized to use function: sqlite_version"),
        ("SELECT sqlite_source_id()", "not authorized to use function"),
        ("SELECT sqlite_compileoption_used('X')", "not authorized to use function"),
    ],
)
async def test_refused(h: Harness, query: str, message: str) -> None:
    async def body(s: Storage) -> None:
        s.sql.exec("CREATE TABLE IF NOT EXISTS t (a)")
        error = sql_error(lambda: s.sql.exec(query))
        assert str(error).startswith(message), str(error)

    await h.run(body)


@pytest.mark.parametrize(
    "query",
    [
        "PRAGMA foreign_keys",
        "PRAGMA foreign_keys = 'yes'",
        "PRAGMA defer_foreign_keys = ON",
        "PRAGMA case_sensitive_like = false",
        "PRAGMA table_info(t)",
        "PRAGMA table_xinfo(t)",
        "PRAGMA table_list",
        "PRAGMA index_list(t)",
        "PRAGMA foreign_key_check",
        "PRAGMA quick_check",
        "PRAGMA quick_check(t)",
        "PRAGMA optimize",
        "PRAGMA optimize(2)",
        "PRAGMA data_version",
        "PRAGMA page_size",
        "SELECT json_extract('{\"a\": 1}', '$.a'), '{\"a\": 2}' ->> '$.a'",
        "SELECT abs(-1), round(1.5), lower('A'), datetime(0, 'unixepoch'), sqrt(4)",
        "SELECT count(*), row_number() OVER () FROM t",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3)"
        " SELECT x FROM c",
        "SELECT name FROM sqlite_schema",
        "CREATE VIRTUAL TABLE docs USING fts5(body)",
        "CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1)",
        "ALTER TABLE t ADD COLUMN b",
        "ALTER TABLE t RENAME TO t2",
        "ANALYZE",
    ],
)
async def test_allowed(h: Harness, query: str) -> None:
    async def body(s: Storage) -> None:
        s.sql.exec("CREATE TABLE IF NOT EXISTS t (a)")
        s.sql.exec(query)

    await h.run(body)


async def test_fts5_search(h: Harness) -> None:
    async def body(s: Storage) -> list[dict[str, Any]]:
        s.sql.exec("CREATE VIRTUAL TABLE docs USING fts5(body)")
        s.sql.exec("INSERT INTO docs VALUES ('hello world'), ('goodbye')")
        return s.sql.exec(
            "SELECT body, bm25(docs) < 0 AS ranked FROM docs WHERE docs MATCH 'hello'"
        ).to_array()

    assert await h.run(body) == [{"body": "hello world", "ranked": 1}]


async def test_limits(h: Harness) -> None:
    async def body(s: Storage) -> None:
        sql = s.sql
        columns = ", ".join(f"c{i}" for i in range(101))
        assert "too many columns" in str(
            sql_error(lambda: sql.exec(f"CREATE TABLE wide ({columns})"))
        )
        sql.exec(f"CREATE TABLE ok ({', '.join(f'c{i}' for i in range(100))})")
        marks = ", ".join("?" * 101)
        assert "too many SQL variables" in str(
            sql_error(lambda: sql.exec(f"SELECT {marks}", *range(101)))
        )
        assert len(sql.exec(f"SELECT {', '.join('?' * 100)}", *range(100)).one()) > 0
        long_sql = "SELECT 1" + " " * 100_000
        assert "too large" in str(sql_error(lambda: sql.exec(long_sql)))
        pattern = "a" * 51
        assert "LIKE or GLOB pattern too complex" in str(
            sql_error(lambda: sql.exec("SELECT 'a' LIKE ?", pattern))
        )
        sql.exec("SELECT 'a' LIKE ?", "a" * 50)
        huge = "SELECT 1 WHERE 1 IN (" + ",".join(["1"] * 12_000) + ")"
        assert "statement too big" in str(sql_error(lambda: sql.exec(huge)))
        compound = " UNION ALL ".join(["SELECT 1"] * 6)
        assert "too many terms in compound SELECT" in str(
            sql_error(lambda: sql.exec(compound))
        )

    await h.run(body)


async def test_foreign_keys_are_on(h: Harness) -> None:
    async def body(s: Storage) -> None:
        s.sql.exec("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        s.sql.exec("CREATE TABLE child (p INTEGER REFERENCES parent (id))")
        assert s.sql.exec("PRAGMA foreign_keys").one() == {"foreign_keys": 1}
        error = sql_error(lambda: s.sql.exec("INSERT INTO child VALUES (1)"))
        assert str(error) == "FOREIGN KEY constraint failed: SQLITE_CONSTRAINT"

    await h.run(body)


async def test_objects_do_not_share_databases(h: Harness) -> None:
    await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE secret (a)")))
    await h.run(lambda s: _ret(s.sql.exec("INSERT INTO secret VALUES ('mine')")))

    async def peek(s: Storage) -> None:
        error = sql_error(lambda: s.sql.exec("SELECT * FROM secret"))
        assert str(error) == "no such table: secret: SQLITE_ERROR"
        assert s.sql.exec("SELECT name FROM sqlite_schema").to_array() == [
            {"name": "_cf_KV"},
            {"name": "_cf_METADATA"},
        ]

    await h.other("someone-else").run(peek)


async def test_user_sql_cannot_reuse_the_backends_statements(h: Harness) -> None:
    # The backend runs its own statements on the same connection; the same
    # text from user code is authorized afresh, not served from the cache.
    await h.run(lambda s: _ret(s.put("k", "v")))

    async def body(s: Storage) -> None:
        for query in [
            "SELECT value FROM _cf_KV WHERE key = ?",
            "INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?, ?)",
        ]:
            args = (b"k",) if "?" in query and "," not in query else (b"k", b"x")
            with pytest.raises(SqlError):
                s.sql.exec(query, *args)
        assert await s.get("k") == "v"

    await h.run(body)


# -- availability ------------------------------------------------------------------


class NoSqlBackend(ControlledBackend):
    """A backend whose stores offer no SQL capability."""

    def open(self, namespace: str, object_id: str, /) -> Any:
        return _NoSqlStore(self.inner.open(namespace, object_id))


class _NoSqlStore:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in {"sql_connection", "current_bookmark"}:
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_sql_needs_a_backend_with_sql() -> None:
    async with Runtime(
        bindings={"P": Plain}, storage=NoSqlBackend(MemoryBackend())
    ) as rt:

        async def body(s: Storage) -> None:
            with pytest.raises(StorageError, match="not backed by SQLite storage"):
                _ = s.sql
            with pytest.raises(StorageError, match=r"storage\.kv \(synchronous KV\)"):
                _ = s.kv
            with pytest.raises(StorageError) as info:
                s.transaction_sync(lambda: None)
            assert str(info.value) == "Durable Object is not backed by SQL."
            with pytest.raises(StorageError, match="point-in-time recovery"):
                await s.get_current_bookmark()
            s.put("still", "works")
            s.delete_all()  # nothing SQL to wipe

        await Harness(rt).run(body)


# -- transactions ------------------------------------------------------------------


async def test_transaction_covers_kv_and_sql(h: Harness) -> None:
    await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE t (a)")))

    async def fails(s: Storage) -> None:
        async def closure(txn: pyobjects.storage.Transaction) -> None:
            txn.put("k", 1)
            s.sql.exec("INSERT INTO t VALUES (1)")
            raise ValueError("no")

        with pytest.raises(ValueError, match="no"):
            await s.transaction(closure)
        assert await s.get("k") is None
        assert s.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 0}

        async def rolled_back(txn: pyobjects.storage.Transaction) -> str:
            s.sql.exec("INSERT INTO t VALUES (2)")
            txn.put("k", 2)
            txn.rollback()
            return "result"

        assert await s.transaction(rolled_back) == "result"
        assert await s.get("k") is None
        assert s.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 0}

        async def nested(txn: pyobjects.storage.Transaction) -> None:
            s.sql.exec("INSERT INTO t VALUES (3)")

            async def inner(txn2: pyobjects.storage.Transaction) -> None:
                s.sql.exec("INSERT INTO t VALUES (4)")
                txn2.put("inner", True)
                raise KeyError("inner")

            with pytest.raises(KeyError):
                await s.transaction(inner)
            txn.put("outer", True)

        await s.transaction(nested)
        assert [r["a"] for r in s.sql.exec("SELECT a FROM t")] == [3]
        assert await s.get(["inner", "outer"]) == {"outer": True}

    await h.run(fails)

    async def after(s: Storage) -> list[Any]:
        return [r["a"] for r in s.sql.exec("SELECT a FROM t")]

    assert await h.run(after) == [3]


async def test_transaction_sync(h: Harness) -> None:
    async def body(s: Storage) -> None:
        sql = s.sql
        sql.exec("CREATE TABLE t (a)")

        def ok() -> str:
            sql.exec("INSERT INTO t VALUES (1)")
            s.kv.put("k", "v")
            return "done"

        assert s.transaction_sync(ok) == "done"
        assert s.transactionSync(lambda: 5) == 5  # type: ignore[attr-defined]

        def fails() -> None:
            sql.exec("INSERT INTO t VALUES (2)")
            s.kv.put("k", "changed")
            s.put("other", 1)

            def inner() -> None:
                sql.exec("INSERT INTO t VALUES (3)")

            s.transaction_sync(inner)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            s.transaction_sync(fails)
        assert [r["a"] for r in sql.exec("SELECT a FROM t")] == [1]
        assert s.kv.get("k") == "v"
        assert s.kv.get("other") is None

        def nested_rollback() -> None:
            sql.exec("INSERT INTO t VALUES (4)")

            def inner() -> None:
                sql.exec("INSERT INTO t VALUES (5)")
                raise KeyError("inner")

            with pytest.raises(KeyError):
                s.transaction_sync(inner)

        s.transaction_sync(nested_rollback)
        assert [r["a"] for r in sql.exec("SELECT a FROM t")] == [1, 4]

        async def coroutine() -> None:
            sql.exec("INSERT INTO t VALUES (6)")  # never runs

        def returns_awaitable() -> Any:
            sql.exec("INSERT INTO t VALUES (7)")
            return coroutine()

        with pytest.raises(TypeError, match="returned an awaitable"):
            s.transaction_sync(returns_awaitable)
        assert [r["a"] for r in sql.exec("SELECT a FROM t")] == [1, 4]

        async def in_async(txn: pyobjects.storage.Transaction) -> None:
            s.transaction_sync(lambda: sql.exec("INSERT INTO t VALUES (8)"))
            txn.rollback()

        await s.transaction(in_async)
        assert [r["a"] for r in sql.exec("SELECT a FROM t")] == [1, 4]

    await h.run(body)
    # A transaction_sync error does not reset the object; everything committed.
    rows = await h.run(lambda s: _ret(s.sql.exec("SELECT a FROM t").to_array()))
    assert rows == [{"a": 1}, {"a": 4}]


async def test_sql_from_another_event_during_a_transaction(h: Harness) -> None:
    await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE t (a)")))
    resumed = anyio.Event()
    in_txn = anyio.Event()
    finish = anyio.Event()
    seen: list[BaseException] = []

    async def first(s: Storage) -> None:
        await resumed.wait()  # an outside wait: other events may start
        try:
            s.sql.exec("INSERT INTO t VALUES (1)")
        except TransactionError as exc:
            seen.append(exc)
        s.put("first", True)  # KV is fine: it goes below the transaction
        finish.set()

    async def second(s: Storage) -> None:
        async def closure(txn: pyobjects.storage.Transaction) -> None:
            s.sql.exec("INSERT INTO t VALUES (2)")
            in_txn.set()
            await finish.wait()

        await s.transaction(closure)

    async with anyio.create_task_group() as tg:
        tg.start_soon(h.run, first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(h.run, second)
        await in_txn.wait()
        resumed.set()
    assert len(seen) == 1
    assert "another event's transaction is open" in str(seen[0])

    async def check(s: Storage) -> tuple[Any, Any]:
        return [r["a"] for r in s.sql.exec("SELECT a FROM t")], await s.get("first")

    assert await h.run(check) == ([2], True)


# -- synchronous KV -------------------------------------------------------------------


async def test_sync_kv_shares_data_with_async_api(h: Harness) -> None:
    async def body(s: Storage) -> None:
        kv = s.kv
        await s.put("a", 1)
        assert kv.get("a") == 1
        assert kv.get("missing") is None
        kv.put("b", {"x": [1, 2]})
        assert await s.get("b") == {"x": [1, 2]}
        assert kv.delete("a") is True
        assert kv.delete("a") is False
        kv.put("c", 3)
        assert list(kv.list()) == [("b", {"x": [1, 2]}), ("c", 3)]
        assert list(kv.list(reverse=True, limit=1)) == [("c", 3)]
        assert list(kv.list(prefix="b")) == [("b", {"x": [1, 2]})]
        with pytest.raises(TypeError, match="both start and start_after"):
            kv.list(start="a", start_after="a")
        with pytest.raises(TypeError):
            kv.get(["a"])  # type: ignore[arg-type]

    await h.run(body)
    assert await h.run(lambda s: s.list()) == {"b": {"x": [1, 2]}, "c": 3}


async def test_sync_kv_reads_committed_data_after_restart(
    backend: StorageBackend,
) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        await Harness(rt).run(lambda s: _ret(s.put("k", "v")))
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        assert await Harness(rt).run(lambda s: _ret(s.kv.get("k"))) == "v"


async def test_only_one_kv_list_iterator(h: Harness) -> None:
    async def body(s: Storage) -> None:
        s.kv.put("a", 1)
        s.kv.put("b", 2)
        first = s.kv.list()
        assert next(first) == ("a", 1)
        second = s.kv.list()
        with pytest.raises(StorageError) as info:
            next(first)
        assert str(info.value) == (
            "kv.list() iterator was invalidated because a new call to kv.list() was "
            "started. Only one kv.list() iterator can exist at a time."
        )
        assert list(second) == [("a", 1), ("b", 2)]

    await h.run(body)


# -- delete_all ------------------------------------------------------------------------


async def test_delete_all_wipes_sql_too(h: Harness) -> None:
    async def fill(s: Storage) -> None:
        sql = s.sql
        sql.exec("CREATE TABLE parent (id INTEGER PRIMARY KEY AUTOINCREMENT)")
        sql.exec("CREATE TABLE child (p INTEGER REFERENCES parent (id))")
        sql.exec("INSERT INTO parent DEFAULT VALUES")
        sql.exec("INSERT INTO child VALUES (1)")
        sql.exec("CREATE INDEX child_p ON child (p)")
        sql.exec("CREATE VIEW v AS SELECT * FROM child")
        sql.exec("CREATE TRIGGER trg AFTER DELETE ON parent BEGIN SELECT 1; END")
        sql.exec("CREATE VIRTUAL TABLE docs USING fts5(body)")
        s.put("k", 1)

    await h.run(fill)

    async def wipe(s: Storage) -> None:
        s.delete_all()
        assert s.sql.exec("SELECT name FROM sqlite_schema").to_array() == [
            {"name": "_cf_KV"},
            {"name": "_cf_METADATA"},
            {"name": "sqlite_sequence"},
        ]
        s.sql.exec("CREATE TABLE fresh (a)")  # after delete_all, in the same batch

    await h.run(wipe)

    async def check(s: Storage) -> tuple[Any, Any]:
        names = [r["name"] for r in s.sql.exec("SELECT name FROM sqlite_schema")]
        return names, await s.list()

    names, kv = await h.run(check)
    assert "fresh" in names
    assert "parent" not in names
    assert kv == {}


async def test_objects_with_only_sql_data_are_listed(h: Harness) -> None:
    await h.run(lambda s: _ret(s.sql.exec("SELECT 1")))
    assert await list_durable_object_ids(h.rt.env.P) == []
    await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE t (a)")))
    assert await list_durable_object_ids(h.rt.env.P) == [h.stub.id]


# -- gates, commits, resets ------------------------------------------------------------


async def test_sql_writes_wait_for_the_output_gate(backend: StorageBackend) -> None:
    controlled = ControlledBackend(backend)
    async with Runtime(bindings={"P": Plain}, storage=controlled) as rt:
        h = Harness(rt)
        await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE t (a)")))
        commits = len(controlled.commits)
        controlled.hold = anyio.Event()
        delivered = anyio.Event()

        async def call() -> None:
            await h.run(lambda s: _ret(s.sql.exec("INSERT INTO t VALUES (1)")))
            delivered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            assert not delivered.is_set()  # the result waits for the commit
            assert len(controlled.commits) == commits + 1
            controlled.hold.set()
        assert delivered.is_set()

        # A read-only statement does not make a commit.
        controlled.hold = None
        commits = len(controlled.commits)
        await h.run(lambda s: _ret(s.sql.exec("SELECT * FROM t").to_array()))
        assert len(controlled.commits) == commits


async def test_failed_commit_resets_and_rolls_back_sql(backend: StorageBackend) -> None:
    controlled = ControlledBackend(backend)
    async with Runtime(bindings={"P": Plain}, storage=controlled) as rt:
        h = Harness(rt)
        await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE t (a)")))
        controlled.fail_next = 1

        async def write(s: Storage) -> None:
            s.sql.exec("INSERT INTO t VALUES (1)")
            s.put("k", 1)

        with pytest.raises(DurableObjectResetError):
            await h.run(write)
        fresh = Harness(rt)

        async def check(s: Storage) -> tuple[Any, Any]:
            return s.sql.exec("SELECT count(*) AS n FROM t").one(), await s.get("k")

        assert await fresh.run(check) == ({"n": 0}, None)


async def test_deferred_foreign_key_failure_at_commit_resets(
    backend: StorageBackend,
) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        h = Harness(rt)

        async def setup(s: Storage) -> None:
            s.sql.exec("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            s.sql.exec("CREATE TABLE child (p INTEGER REFERENCES parent (id))")

        await h.run(setup)

        async def violate(s: Storage) -> None:
            s.sql.exec("PRAGMA defer_foreign_keys = ON")
            s.sql.exec("INSERT INTO child VALUES (42)")
            s.put("k", 1)

        with pytest.raises(DurableObjectResetError, match="FOREIGN KEY"):
            await h.run(violate)

        async def check(s: Storage) -> tuple[Any, Any]:
            return s.sql.exec("SELECT count(*) AS n FROM child").one(), await s.get("k")

        assert await Harness(rt).run(check) == ({"n": 0}, None)


async def test_sql_survives_eviction(backend: StorageBackend) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        h = Harness(rt)
        await h.run(
            lambda s: _ret(s.sql.exec("CREATE TABLE t (a); INSERT INTO t VALUES (9)"))
        )
        await evict(h.stub)
        rows = await h.run(lambda s: _ret(s.sql.exec("SELECT a FROM t").to_array()))
        assert rows == [{"a": 9}]


async def test_sql_in_memory_backend_touches_no_disk(tmp_path: Any) -> None:
    import os

    before = os.listdir(tmp_path)
    async with Runtime(bindings={"P": Plain}, storage=MemoryBackend()) as rt:
        await Harness(rt).run(
            lambda s: _ret(s.sql.exec("CREATE TABLE t (a); INSERT INTO t VALUES (1)"))
        )
    assert os.listdir(tmp_path) == before


async def test_errors_of_statements_that_ran_before(h: Harness) -> None:
    # A statement that ran once takes a shorter path; its errors are the same.
    async def body(s: Storage) -> None:
        sql = s.sql
        sql.exec("CREATE TABLE t (a INTEGER PRIMARY KEY)")
        assert sql.exec("SELECT ? AS v", 1).one() == {"v": 1}
        with pytest.raises(ValueError, match="64-bit INTEGER"):
            sql.exec("SELECT ? AS v", 2**63)
        with pytest.raises(ValueError, match="lone surrogate"):
            sql.exec("SELECT ? AS v", "\udc00")
        with pytest.raises(TypeError, match="binding 1 is dict"):
            sql.exec("SELECT ? AS v", {})
        error = sql_error(lambda: sql.exec("SELECT ? AS v"))
        assert str(error) == "Wrong number of parameter bindings for SQL query."
        sql.exec("INSERT INTO t VALUES (?)", 1)
        error = sql_error(lambda: sql.exec("INSERT INTO t VALUES (?)", 1))
        assert error.code == "SQLITE_CONSTRAINT"
        sql.exec("INSERT INTO t VALUES (?)", 2)
        assert sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 2}

    await h.run(body)
    assert await h.run(lambda s: _ret(s.sql.exec("SELECT a FROM t").to_array())) == [
        {"a": 1},
        {"a": 2},
    ]


async def test_statements_are_authorized_again_after_a_schema_change(
    h: Harness,
) -> None:
    async def body(s: Storage) -> None:
        sql = s.sql
        sql.exec("CREATE VIEW v AS SELECT 1 AS a")
        assert sql.exec("SELECT * FROM v").to_array() == [{"a": 1}]
        sql.exec("DROP VIEW v")
        try:
            sql.exec("CREATE VIEW v AS SELECT key AS a FROM _cf_KV")
        except SqlError:
            return  # refused at creation: nothing more to check
        with pytest.raises(SqlError, match="prohibited"):
            sql.exec("SELECT * FROM v")

    await h.run(body)


async def test_sql_after_the_backend_closed_the_connection(tmp_path: Any) -> None:
    # With one open database at a time, two objects keep closing each other's
    # connection between events; statements that ran before reopen it.
    from pyobjects.storage import SQLiteBackend

    backend = SQLiteBackend(tmp_path, max_open_connections=1)
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        a, b = Harness(rt, "a"), Harness(rt, "b")
        for h in (a, b):
            await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE t (a)")))
        for i in range(3):
            for h in (a, b):

                async def insert(s: Storage, i: int = i) -> None:
                    s.sql.exec("INSERT INTO t VALUES (?)", i)

                await h.run(insert)
        for h in (a, b):
            rows = await h.run(lambda s: _ret(s.sql.exec("SELECT a FROM t").to_array()))
            assert rows == [{"a": 0}, {"a": 1}, {"a": 2}]
        assert backend._open_connections == 1


def test_memory_sql_databases_close_from_another_thread() -> None:
    # A server runs the runtime on its own thread; the backend's finalizer
    # may close the in-memory databases from another one (at exit, say).
    import threading

    backend = MemoryBackend()
    ids: list[str] = []

    async def main() -> None:
        async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
            h = Harness(rt)
            await h.run(lambda s: _ret(s.sql.exec("CREATE TABLE t (a)")))
            ids.append(str(h.stub.id))

    thread = threading.Thread(target=anyio.run, args=(main,))
    thread.start()
    thread.join()
    conn = backend.open("P", ids[0]).sql_connection(create=False)
    assert conn is not None
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()
