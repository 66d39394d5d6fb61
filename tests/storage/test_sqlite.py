from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING, Any, Literal

import pytest

from pyobjects._errors import StorageError
from pyobjects.storage import ListQuery, MemoryBackend, SQLiteBackend, WriteBatch

if TYPE_CHECKING:
    from pathlib import Path

    from pyobjects.storage import StorageBackend

NS = "things"
ID1 = "1" * 64
ID2 = "2" * 64


def object_path(root: Path, object_id: str = ID1, namespace: str = NS) -> Path:
    return root / namespace / f"{object_id}.sqlite"


def raw(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path, isolation_level=None))


def index_rows(root: Path) -> list[tuple[str, str, int]]:
    with raw(root / "@metadata.sqlite") as conn:
        rows = conn.execute("SELECT namespace, object_id, time_ms FROM alarms")
        return sorted(rows)


async def test_persistence_across_backend_instances(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(
        WriteBatch(writes={"a": b"1", "b\x00": b"2"}, alarm_changed=True, alarm=42)
    )
    await store.commit(WriteBatch(writes={"c": b"3"}, name="first"))
    await backend.open(NS, ID2).commit(WriteBatch(writes={"x": b"y"}))
    await backend.aclose()

    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    assert await store.list(ListQuery()) == [("a", b"1"), ("b\x00", b"2"), ("c", b"3")]
    assert await store.get_alarm() == 42
    assert await store.get_name() == "first"
    assert await backend.list_object_ids(NS) == [ID1, ID2]
    [entry] = await backend.pending_alarms()
    assert (entry.namespace, entry.object_id, entry.time_ms) == (NS, ID1, 42)
    await backend.aclose()


async def test_files_are_created_lazily(tmp_path: Path) -> None:
    root = tmp_path / "data"
    backend = SQLiteBackend(root)
    store = backend.open(NS, ID1)
    assert await store.get(["k"]) == {}
    assert await store.list(ListQuery(reverse=True)) == []
    assert await store.get_alarm() is None
    assert await store.get_name() is None
    assert await backend.list_object_ids(NS) == []
    assert await backend.pending_alarms() == []
    # Commits that would leave the object empty need no file either.
    await store.commit(WriteBatch(delete_all=True, writes={"k": None}, name="n"))
    await store.commit(WriteBatch(alarm_changed=True, alarm=None))
    assert not root.exists()

    await store.commit(WriteBatch(writes={"k": b"v"}))
    assert sorted(p.name for p in root.iterdir()) == [NS]
    assert object_path(root).is_file()
    assert not (root / "@metadata.sqlite").exists()  # no alarm yet
    await store.commit(WriteBatch(alarm_changed=True, alarm=5))
    assert (root / "@metadata.sqlite").is_file()
    await backend.aclose()


async def test_an_alarm_alone_creates_the_file(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open(NS, ID1).commit(WriteBatch(alarm_changed=True, alarm=5))
    assert object_path(tmp_path).is_file()
    assert await backend.list_object_ids(NS) == [ID1]
    await backend.aclose()


async def test_schema(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open(NS, ID1).commit(
        WriteBatch(writes={"\U0001f600\x00": b"v"}, alarm_changed=True, alarm=1)
    )
    await backend.aclose()
    with raw(object_path(tmp_path)) as conn:
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_schema"))
        assert {"_cf_KV", "_cf_METADATA"} <= tables.keys()
        assert all("WITHOUT ROWID" in tables[name] for name in tables)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        # Keys are the UTF-8 bytes, so SQLite orders them by code point.
        rows = conn.execute("SELECT typeof(key), key FROM _cf_KV").fetchall()
        assert rows == [("blob", "\U0001f600\x00".encode())]
        assert conn.execute("SELECT * FROM _cf_METADATA").fetchall() == [("alarm", 1)]


async def test_a_file_without_the_tables_gets_them(tmp_path: Path) -> None:
    object_path(tmp_path).parent.mkdir()
    with raw(object_path(tmp_path)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    assert await store.list(ListQuery()) == []
    # A user SQL table is stored data: the object is listed.
    assert await backend.list_object_ids(NS) == [ID1]
    await store.commit(WriteBatch(writes={"k": b"v"}))
    assert await store.get(["k"]) == {"k": b"v"}
    await backend.aclose()


@pytest.mark.parametrize(
    "namespace",
    ["..", ".", "../x", "a/../../b", "/abs", "a\\b", "", "x" * 129, "@metadata.sqlite"],
)
async def test_bad_namespaces_are_rejected(tmp_path: Path, namespace: str) -> None:
    root = tmp_path / "data"
    backend = SQLiteBackend(root)
    with pytest.raises(ValueError, match="namespace"):
        backend.open(namespace, ID1)
    with pytest.raises(ValueError, match="namespace"):
        await backend.list_object_ids(namespace)
    await backend.aclose()
    assert not root.exists()


@pytest.mark.parametrize(
    "object_id",
    ["../" + "a" * 61, "a" * 63, "a" * 65, "A" * 64, "a" * 63 + "/", "a" * 64 + "\n"],
)
async def test_bad_object_ids_are_rejected(tmp_path: Path, object_id: str) -> None:
    backend = SQLiteBackend(tmp_path)
    with pytest.raises(ValueError, match="object id"):
        backend.open(NS, object_id)
    await backend.aclose()


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteBackend(tmp_path, synchronous="FULL")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_open_connections"):
        SQLiteBackend(tmp_path, max_open_connections=0)


def open_object_files(root: Path) -> int:
    """Count this process's open file descriptors on object databases."""
    if not os.path.isdir("/proc/self/fd"):
        return 0  # cannot tell on this platform
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root / NS)) and target.endswith(".sqlite"):
            count += 1
    return count


async def test_open_connections_are_bounded(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path, max_open_connections=3)
    ids = [f"{n:064x}" for n in range(10)]
    stores = [backend.open(NS, object_id) for object_id in ids]

    def check_bound() -> None:
        assert backend._open_connections <= 3
        assert backend._open_connections == len(backend._connections)
        assert open_object_files(tmp_path) <= 3

    for n, store in enumerate(stores):
        await store.commit(WriteBatch(writes={"n": str(n).encode()}))
        check_bound()
    assert backend._open_connections == 3
    # Evicted handles reopen transparently, in any order.
    for n, store in [*enumerate(stores), *reversed(list(enumerate(stores)))]:
        assert await store.get(["n"]) == {"n": str(n).encode()}
        check_bound()
    assert await backend.list_object_ids(NS) == ids
    check_bound()
    stores[-1].close()  # one of the open ones
    assert backend._open_connections == 2
    stores[-1].close()
    assert backend._open_connections == 2
    await backend.aclose()
    assert backend._open_connections == 0
    assert backend._index is None
    assert open_object_files(tmp_path) == 0


async def test_a_closed_backend_reopens_what_it_needs(tmp_path: Path) -> None:
    # A restarted runtime may reuse the backend instance after aclose().
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"k": b"v"}, alarm_changed=True, alarm=1))
    await backend.aclose()
    await backend.aclose()
    assert backend._open_connections == 0
    assert backend._index is None
    assert await store.get(["k"]) == {"k": b"v"}
    assert [entry.time_ms for entry in await backend.pending_alarms()] == [1]
    assert await backend.list_object_ids(NS) == [ID1]
    await backend.aclose()
    assert backend._open_connections == 0
    assert open_object_files(tmp_path) == 0


@pytest.mark.parametrize(
    ("synchronous", "level"), [("off", 0), ("normal", 1), ("full", 2), ("extra", 3)]
)
async def test_synchronous_is_applied(
    tmp_path: Path,
    synchronous: Literal["off", "normal", "full", "extra"],
    level: int,
) -> None:
    backend = SQLiteBackend(tmp_path / "data", synchronous=synchronous)
    await backend.open(NS, ID1).commit(
        WriteBatch(writes={"k": b"v"}, alarm_changed=True, alarm=1)
    )
    conn = backend._connections[NS, ID1]
    assert conn.execute("PRAGMA synchronous").fetchone() == (level,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert backend._index is not None
    assert backend._index.execute("PRAGMA synchronous").fetchone() == (level,)
    assert backend._index.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    await backend.aclose()


async def test_alarm_index_is_written_before_set_and_after_clear(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"k": b"v"}))
    await store.commit(WriteBatch(alarm_changed=True, alarm=1))
    trace: list[str] = []
    assert backend._index is not None
    backend._index.set_trace_callback(lambda sql: trace.append(f"index: {sql}"))
    conn = backend._connections[NS, ID1]
    conn.set_trace_callback(lambda sql: trace.append(f"object: {sql}"))

    await store.commit(WriteBatch(alarm_changed=True, alarm=2))
    index_write = next(i for i, s in enumerate(trace) if s.startswith("index: INS"))
    assert trace.index("object: COMMIT") > index_write

    trace.clear()
    await store.commit(WriteBatch(alarm_changed=True, alarm=None))
    index_delete = next(i for i, s in enumerate(trace) if s.startswith("index: DEL"))
    assert trace.index("object: COMMIT") < index_delete
    await backend.aclose()


def add_failing_trigger(path: Path) -> None:
    """Make every later commit that writes the key "boom" fail inside SQLite."""
    with raw(path) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON _cf_KV WHEN NEW.key = X'626f6f6d'"
            " BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )


async def test_failed_commit_applies_nothing(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(
        WriteBatch(writes={"a": b"1", "b": b"2"}, alarm_changed=True, alarm=10)
    )
    await store.commit(WriteBatch(name="orig"))
    add_failing_trigger(object_path(tmp_path))
    batch = WriteBatch(
        delete_all=True,
        writes={"a": b"x", "b": None, "c": b"3", "boom": b"!"},
        alarm_changed=True,
        alarm=20,
        name="changed",
    )
    with pytest.raises(StorageError, match="boom") as info:
        await store.commit(batch)
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert await store.list(ListQuery()) == [("a", b"1"), ("b", b"2")]
    assert await store.get_alarm() == 10
    assert await store.get_name() == "orig"
    # The index row was written first, so it is newer than the truth now ...
    assert index_rows(tmp_path) == [(NS, ID1, 20)]
    # ... and pending_alarms() reports (and repairs) the truth.
    [entry] = await backend.pending_alarms()
    assert entry.time_ms == 10
    assert index_rows(tmp_path) == [(NS, ID1, 10)]
    # A lone write is a statement of its own; it fails as a whole too.
    with pytest.raises(StorageError, match="boom"):
        await store.commit(WriteBatch(writes={"boom": b"!"}))
    assert await store.get(["boom"]) == {}
    # The handle keeps working.
    await store.commit(WriteBatch(writes={"c": b"3"}))
    assert await store.get(["a", "c"]) == {"a": b"1", "c": b"3"}
    await backend.aclose()


async def test_a_failed_first_alarm_leaves_only_a_stale_row(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"a": b"1"}))
    add_failing_trigger(object_path(tmp_path))
    with pytest.raises(StorageError):
        await store.commit(
            WriteBatch(writes={"boom": b"!"}, alarm_changed=True, alarm=7)
        )
    assert index_rows(tmp_path) == [(NS, ID1, 7)]
    assert await store.get_alarm() is None
    assert await backend.pending_alarms() == []
    assert index_rows(tmp_path) == []
    await backend.aclose()


async def test_stale_index_rows_are_dropped(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open(NS, ID1).commit(WriteBatch(alarm_changed=True, alarm=30))
    await backend.aclose()
    with raw(tmp_path / "@metadata.sqlite") as conn:
        conn.executemany(
            "INSERT INTO alarms VALUES (?, ?, ?)",
            [
                (NS, ID2, 10),  # no file at all
                ("other", ID1, 20),  # no such namespace
                ("../evil", ID1, 5),  # never written by the backend
                (NS, "not-an-id", 5),
            ],
        )
    backend = SQLiteBackend(tmp_path)
    [entry] = await backend.pending_alarms()
    assert (entry.namespace, entry.object_id, entry.time_ms) == (NS, ID1, 30)
    rows = index_rows(tmp_path)
    assert (NS, ID1, 30) in rows
    assert (NS, ID2, 10) not in rows
    assert ("other", ID1, 20) not in rows
    assert not (tmp_path / "other").exists()
    await backend.aclose()


async def test_index_failures_after_a_clear_are_not_commit_failures(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"k": b"v"}, alarm_changed=True, alarm=1))
    assert backend._index is not None
    backend._index.close()
    backend._index = sqlite3.connect(
        f"file:{tmp_path / '@metadata.sqlite'}?mode=ro", uri=True, isolation_level=None
    )
    await store.commit(WriteBatch(alarm_changed=True, alarm=None))
    assert await store.get_alarm() is None
    assert index_rows(tmp_path) == [(NS, ID1, 1)]  # stale, but a superset
    assert await backend.pending_alarms() == []
    await backend.aclose()


async def test_an_unreadable_object_keeps_its_index_row(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open(NS, ID1).commit(WriteBatch(alarm_changed=True, alarm=3))
    await backend.aclose()
    for suffix in ("", "-wal", "-shm"):
        path = object_path(tmp_path).with_name(f"{ID1}.sqlite{suffix}")
        if path.exists():
            path.unlink()
    object_path(tmp_path).write_bytes(b"this is not a database" * 100)
    backend = SQLiteBackend(tmp_path)
    [entry] = await backend.pending_alarms()
    assert entry.time_ms == 3
    await backend.aclose()


async def test_corrupt_files_raise_storage_error(tmp_path: Path) -> None:
    object_path(tmp_path).parent.mkdir()
    object_path(tmp_path).write_bytes(b"this is not a database" * 100)
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    with pytest.raises(StorageError) as info:
        await store.get(["k"])
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(StorageError):
        await store.commit(WriteBatch(writes={"k": b"v"}))
    with pytest.raises(StorageError):
        await backend.list_object_ids(NS)
    assert backend._open_connections == 0
    await backend.aclose()


async def test_unwritable_directory_raises_storage_error(tmp_path: Path) -> None:
    (tmp_path / NS).write_text("a file where the namespace directory should be")
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    assert await store.get(["k"]) == {}
    with pytest.raises(StorageError) as info:
        await store.commit(WriteBatch(writes={"k": b"v"}))
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(StorageError):
        await backend.list_object_ids(NS)
    await backend.aclose()


async def test_list_object_ids_ignores_other_files(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open(NS, ID2).commit(WriteBatch(writes={"k": b"v"}))
    namespace_dir = tmp_path / NS
    (namespace_dir / "notes.txt").write_text("hello")
    (namespace_dir / "abc.sqlite").write_text("not an id")
    (namespace_dir / f"{'F' * 64}.sqlite").write_text("not lowercase")
    (namespace_dir / f"{ID1}.sqlite-wal").write_text("not a database")
    assert await backend.list_object_ids(NS) == [ID2]
    await backend.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_any_python_string_is_a_key(tmp_path: Path, kind: str) -> None:
    # Lone surrogates too: SQLite stores them "surrogatepass"-encoded, which
    # keeps code point order, so both backends agree.
    backend: StorageBackend = (
        SQLiteBackend(tmp_path) if kind == "sqlite" else MemoryBackend()
    )
    keys = ["\ud800", "\udfff", "\ud83d\ude00", "\U0001f600", "\ud7ff", "\ue000", ""]
    model = {key: key.encode("utf-8", "surrogatepass") for key in keys}
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes=model))
    assert await store.list(ListQuery()) == sorted(model.items())
    assert await store.list(ListQuery(start="\ud800", end="\ue000", reverse=True)) == [
        (key, model[key])
        for key in sorted(keys, reverse=True)
        if "\ud800" <= key < "\ue000"
    ]
    surrogates = ["\udfff", "\ud800"]
    assert list((await store.get(surrogates)).items()) == [
        (key, model[key]) for key in sorted(surrogates)
    ]
    await backend.aclose()


class Interrupt(BaseException):
    pass


class InterruptingConnection:
    """Delegates to a connection, but is interrupted writing metadata."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if "_cf_METADATA" in sql:
            raise Interrupt
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        return self.conn.executemany(sql, rows)  # type: ignore[arg-type]

    def close(self) -> None:
        self.conn.close()


async def test_an_interrupted_commit_is_rolled_back(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"a": b"1"}))
    conn = backend._connections[NS, ID1]
    backend._connections[NS, ID1] = InterruptingConnection(conn)  # type: ignore[assignment]
    with pytest.raises(Interrupt):
        await store.commit(
            WriteBatch(delete_all=True, writes={"b": b"2"}, name="never")
        )
    assert not conn.in_transaction
    backend._connections[NS, ID1] = conn
    assert await store.list(ListQuery()) == [("a", b"1")]
    assert await store.get_name() is None
    await backend.aclose()


async def test_reads_of_broken_tables_raise_storage_error(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"k": b"v"}, alarm_changed=True, alarm=1))
    with raw(object_path(tmp_path)) as conn:
        conn.execute("DROP TABLE _cf_KV")
        conn.execute("DROP TABLE _cf_METADATA")
    with pytest.raises(StorageError, match="no such table"):
        await store.get(["k"])
    with pytest.raises(StorageError, match="no such table"):
        await store.list(ListQuery())
    with pytest.raises(StorageError, match="no such table"):
        await store.get_alarm()
    with pytest.raises(StorageError, match="no such table"):
        await store.get_name()
    with raw(tmp_path / "@metadata.sqlite") as conn:
        conn.execute("DROP TABLE alarms")
    # An index that cannot be read is rebuilt from the object databases (here
    # unreadable too, so no alarm is found): the runtime can still start.
    assert await backend.pending_alarms() == []
    assert index_rows(tmp_path) == []
    await backend.aclose()
    # Reopening recreates the tables (empty).
    backend = SQLiteBackend(tmp_path)
    assert await backend.open(NS, ID1).get(["k"]) == {}
    assert await backend.pending_alarms() == []
    await backend.aclose()


async def test_list_object_ids_reports_broken_tables(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open(NS, ID1).commit(WriteBatch(writes={"k": b"v"}))
    with raw(object_path(tmp_path)) as conn:
        conn.execute("DROP TABLE _cf_KV")
    with pytest.raises(StorageError, match="no such table"):
        await backend.list_object_ids(NS)
    await backend.aclose()


@pytest.mark.parametrize("breakage", ["corrupt", "read-only"])
async def test_alarm_index_failures_fail_the_commit(
    tmp_path: Path, breakage: str
) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"k": b"v"}))
    if breakage == "corrupt":
        (tmp_path / "@metadata.sqlite").write_bytes(b"not a database" * 100)
    else:
        await store.commit(WriteBatch(alarm_changed=True, alarm=1))
        await store.commit(WriteBatch(alarm_changed=True, alarm=None))
        assert backend._index is not None
        backend._index.close()
        backend._index = sqlite3.connect(
            f"file:{tmp_path / '@metadata.sqlite'}?mode=ro",
            uri=True,
            isolation_level=None,
        )
    with pytest.raises(StorageError, match="alarm index"):
        await store.commit(
            WriteBatch(writes={"k": b"new"}, alarm_changed=True, alarm=9)
        )
    assert await store.get(["k"]) == {"k": b"v"}
    assert await store.get_alarm() is None
    await backend.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize(
    "batch",
    [
        WriteBatch(writes={"ok": b"1", 5: b"2"}),  # type: ignore[dict-item]
        WriteBatch(writes={"ok": b"1", "bad": "str"}),  # type: ignore[dict-item]
        WriteBatch(writes={"ok": b"1"}, alarm_changed=True, alarm="1"),  # type: ignore[arg-type]
        WriteBatch(writes={"ok": b"1"}, name=b"n"),  # type: ignore[arg-type]
    ],
)
async def test_batches_of_the_wrong_types_are_rejected(
    tmp_path: Path, kind: str, batch: WriteBatch
) -> None:
    backend: StorageBackend = (
        SQLiteBackend(tmp_path) if kind == "sqlite" else MemoryBackend()
    )
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(writes={"k": b"v"}))
    with pytest.raises(TypeError):
        await store.commit(batch)
    assert await store.list(ListQuery()) == [("k", b"v")]
    await backend.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_alarm_retries_are_kept_for_their_alarm_only(
    tmp_path: Path, kind: str
) -> None:
    backend: MemoryBackend | SQLiteBackend = (
        MemoryBackend() if kind == "memory" else SQLiteBackend(tmp_path)
    )
    store = backend.open(NS, ID1)
    await store.commit(WriteBatch(alarm_changed=True, alarm=100))
    await backend.record_alarm_retry(
        NS, ID1, scheduled_ms=100, retry_count=2, retry_ms=7_000
    )
    (entry,) = await backend.pending_alarms()
    assert (entry.time_ms, entry.retry_count, entry.retry_ms) == (100, 2, 7_000)
    # A count recorded for another time of the alarm does not apply.
    await backend.record_alarm_retry(
        NS, ID1, scheduled_ms=99, retry_count=5, retry_ms=9_000
    )
    (entry,) = await backend.pending_alarms()
    assert (entry.retry_count, entry.retry_ms) == (0, None)
    # A new alarm starts over; so does one set again after it was deleted.
    await backend.record_alarm_retry(
        NS, ID1, scheduled_ms=100, retry_count=1, retry_ms=3_000
    )
    await store.commit(WriteBatch(alarm_changed=True, alarm=None))
    await store.commit(WriteBatch(alarm_changed=True, alarm=100))
    (entry,) = await backend.pending_alarms()
    assert (entry.retry_count, entry.retry_ms) == (0, None)
    with pytest.raises(ValueError, match="invalid object id"):
        await backend.record_alarm_retry(
            NS, "nope", scheduled_ms=100, retry_count=1, retry_ms=1
        )
    await backend.aclose()


async def test_an_index_without_the_retries_table_gets_it(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open(NS, ID1).commit(WriteBatch(alarm_changed=True, alarm=100))
    await backend.aclose()
    with raw(tmp_path / "@metadata.sqlite") as conn:  # as written before #11
        conn.execute("DROP TABLE alarm_retries")
    backend = SQLiteBackend(tmp_path)
    await backend.record_alarm_retry(
        NS, ID1, scheduled_ms=100, retry_count=3, retry_ms=5_000
    )
    (entry,) = await backend.pending_alarms()
    assert (entry.time_ms, entry.retry_count, entry.retry_ms) == (100, 3, 5_000)
    await backend.aclose()
