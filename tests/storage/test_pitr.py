"""Point-in-time recovery (reference §8.6) on SQLiteBackend and PostgresBackend."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import zlib
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pyobjects import DurableObject, DurableObjectResetError, Runtime, StorageError
from pyobjects.storage import (
    MemoryBackend,
    PostgresBackend,
    SQLiteBackend,
    StorageBackend,
    WriteBatch,
    sqlite,
)
from pyobjects.storage._history import History, compress, parse_bookmark
from pyobjects.testing import ManualClock
from tests.postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator

DAY_MS = 86_400_000


class Notes(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS notes (body TEXT)")

    async def add(self, body: str) -> None:
        self.ctx.storage.sql.exec("INSERT INTO notes VALUES (?)", body)
        self.ctx.storage.put("last", body)

    async def set_alarm(self, at: int | None) -> None:
        if at is None:
            self.ctx.storage.delete_alarm()
        else:
            self.ctx.storage.set_alarm(at)

    async def alarm(self, info: Any) -> None:
        pass

    async def state(self) -> tuple[list[str], Any, Any]:
        notes = [r["body"] for r in self.ctx.storage.sql.exec("SELECT body FROM notes")]
        storage = self.ctx.storage
        return notes, await storage.get("last"), await storage.get_alarm()

    async def bookmark(self) -> str:
        return await self.ctx.storage.get_current_bookmark()

    async def bookmark_for(self, when: int) -> str:
        return await self.ctx.storage.get_bookmark_for_time(when)

    async def schedule(self, bookmark: str) -> str:
        return await self.ctx.storage.on_next_session_restore_bookmark(bookmark)

    async def restart(self) -> None:
        self.ctx.abort("restoring")


START = 1_700_000_000_000


async def restore_now(rt: Runtime, name: str, bookmark: str) -> str:
    stub = rt.env.N.get_by_name(name)
    undo: str = await stub.schedule(bookmark)
    with pytest.raises(DurableObjectResetError, match="restoring"):
        await stub.restart()
    return undo


MakeStorage = Callable[..., StorageBackend]
# Commits per SQLite history archive (the PostgreSQL log has snapshots instead).
ARCHIVE_EVERY = sqlite._ARCHIVE_EVERY


@pytest.fixture(params=["sqlite", "postgres"])
def make_storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[MakeStorage]:
    """Backends with point-in-time recovery; each call is a new process's view."""
    if request.param == "sqlite":
        yield lambda **options: SQLiteBackend(tmp_path, **options)
        return
    dsn = require_postgres()
    schema = new_schema()
    yield lambda **options: PostgresBackend(dsn, schema=schema, **options)
    drop_schema(dsn, schema)


async def test_restore_brings_back_exactly_that_state_and_undo(
    make_storage: MakeStorage,
) -> None:
    clock = ManualClock(start_ms=START)
    async with Runtime(
        bindings={"N": Notes}, storage=make_storage(), clock=clock
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        await stub.add("one")
        await stub.set_alarm(START + DAY_MS)
        first = await stub.bookmark()
        await clock.advance(1000)
        await stub.add("two")
        await stub.set_alarm(START + 2 * DAY_MS)
        second = await stub.bookmark()
        await stub.add("three")
        assert await stub.state() == (
            ["one", "two", "three"],
            "three",
            START + 2 * DAY_MS,
        )

        undo = await restore_now(rt, "a", first)
        stub = rt.env.N.get_by_name("a")
        assert await stub.state() == (["one"], "one", START + DAY_MS)

        # The undo bookmark brings back the state just before the restore.
        await restore_now(rt, "a", undo)
        stub = rt.env.N.get_by_name("a")
        assert await stub.state() == (
            ["one", "two", "three"],
            "three",
            START + 2 * DAY_MS,
        )
        await restore_now(rt, "a", second)
        assert await rt.env.N.get_by_name("a").state() == (
            ["one", "two"],
            "two",
            START + 2 * DAY_MS,
        )
        latest = await rt.env.N.get_by_name("a").bookmark()
        assert sorted([latest, second, first, undo]) == [first, second, undo, latest]


async def test_restored_alarm_is_scheduled(make_storage: MakeStorage) -> None:
    clock = ManualClock(start_ms=START)
    fired: list[int] = []

    class Alarmed(Notes):
        async def alarm(self, info: Any) -> None:
            fired.append(clock.now_ms())

    async with Runtime(
        bindings={"N": Alarmed}, storage=make_storage(), clock=clock
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        await stub.set_alarm(START + 5000)
        with_alarm = await stub.bookmark()
        await stub.set_alarm(None)
        await restore_now(rt, "a", with_alarm)
        # The restore happens when the object next starts; its alarm with it.
        assert (await rt.env.N.get_by_name("a").state())[2] == START + 5000
        await clock.advance(10_000)
        assert fired == [START + 5000]


async def test_bookmark_for_time(make_storage: MakeStorage) -> None:
    clock = ManualClock(start_ms=START)
    async with Runtime(
        bindings={"N": Notes},
        storage=make_storage(pitr_retention=timedelta(days=2)),
        clock=clock,
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        await stub.add("one")
        at_one = clock.now_ms()
        await clock.advance(DAY_MS)
        await stub.add("two")
        assert await stub.bookmark_for(at_one) < await stub.bookmark()
        assert await stub.bookmark_for(clock.now_ms() + 10_000) == await stub.bookmark()
        with pytest.raises(ValueError, match="within the last 2 days"):
            await stub.bookmark_for(clock.now_ms() - 3 * DAY_MS)
        with pytest.raises(ValueError, match="no history that old"):
            await stub.bookmark_for(START - 1)
        with pytest.raises(TypeError, match="get_bookmark_for_time"):
            await stub.bookmark_for("yesterday")
        await restore_now(rt, "a", await stub.bookmark_for(at_one))
        assert (await rt.env.N.get_by_name("a").state())[0] == ["one"]


async def test_old_history_is_folded_away(make_storage: MakeStorage) -> None:
    clock = ManualClock(start_ms=START)
    async with Runtime(
        bindings={"N": Notes},
        storage=make_storage(pitr_retention=timedelta(days=1)),
        clock=clock,
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        await stub.add("old")
        old = await stub.bookmark()
        await clock.advance(1000)
        await stub.add("older")  # the state at the cutoff: still restorable
        await clock.advance(2 * DAY_MS)
        for i in range(3):
            await stub.add(f"new{i}")
        middle = await stub.bookmark()
        await stub.add("last")
        await stub.bookmark()  # archives, and prunes what is older than a day
        with pytest.raises(ValueError, match="older than the history kept"):
            await stub.schedule(old)
        await restore_now(rt, "a", middle)
        assert (await rt.env.N.get_by_name("a").state())[0] == [
            "old",
            "older",
            "new0",
            "new1",
            "new2",
        ]


async def test_many_commits_across_archives(make_storage: MakeStorage) -> None:
    clock = ManualClock(start_ms=START)
    async with Runtime(
        bindings={"N": Notes}, storage=make_storage(), clock=clock
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        marks = {}
        middle = ARCHIVE_EVERY + 44
        for i in range(2 * ARCHIVE_EVERY + 100):  # several automatic archives
            await stub.add(f"n{i}")
            if i in (10, middle):
                marks[i] = await stub.bookmark()
        await restore_now(rt, "a", marks[middle])
        notes, last, _ = await rt.env.N.get_by_name("a").state()
        assert notes == [f"n{i}" for i in range(middle + 1)]
        assert last == f"n{middle}"
        await restore_now(rt, "a", marks[10])
        assert (await rt.env.N.get_by_name("a").state())[0] == [
            f"n{i}" for i in range(11)
        ]


async def test_restore_waits_for_the_next_start_even_across_a_restart(
    make_storage: MakeStorage,
) -> None:
    clock = ManualClock(start_ms=START)
    async with Runtime(
        bindings={"N": Notes}, storage=make_storage(), clock=clock
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        await stub.add("one")
        mark = await stub.bookmark()
        await stub.add("two")
        await stub.schedule(mark)
        # Not restarted yet: the session goes on with the current data.
        assert (await stub.state())[0] == ["one", "two"]
    # A new process (new backend instance) restores at the object's start.
    async with Runtime(
        bindings={"N": Notes}, storage=make_storage(), clock=clock
    ) as rt:
        assert (await rt.env.N.get_by_name("a").state())[0] == ["one"]
    async with Runtime(
        bindings={"N": Notes}, storage=make_storage(), clock=clock
    ) as rt:
        # Restored once, not at every start.
        stub = rt.env.N.get_by_name("a")
        await stub.add("three")
        assert (await stub.state())[0] == ["one", "three"]


async def test_bad_bookmarks(make_storage: MakeStorage) -> None:
    async with Runtime(bindings={"N": Notes}, storage=make_storage()) as rt:
        a = rt.env.N.get_by_name("a")
        b = rt.env.N.get_by_name("b")
        await a.add("x")
        mark = await a.bookmark()
        with pytest.raises(ValueError, match="belongs to another Durable Object"):
            await b.schedule(mark)
        for bad in ["", "nope", mark.upper(), mark[:-1] + "g", mark.replace("-", "")]:
            with pytest.raises(ValueError, match="bookmark"):
                await a.schedule(bad)
        with pytest.raises(TypeError, match="bookmark must be a str"):
            await a.schedule(123)
        assert len(mark.split("-")) == 4


async def test_pitr_unavailable(tmp_path: Path) -> None:
    message = (
        "This Durable Object's storage back-end does not implement point-in-time "
        "recovery"
    )
    for backend in (MemoryBackend(), SQLiteBackend(tmp_path, pitr_retention=0)):
        async with Runtime(bindings={"N": Notes}, storage=backend) as rt:
            stub = rt.env.N.get_by_name("a")
            await stub.add("x")
            with pytest.raises(StorageError, match=message):
                await stub.bookmark()
            with pytest.raises(StorageError, match=message):
                await stub.bookmark_for(START)
            with pytest.raises(StorageError, match=message):
                await stub.schedule(
                    "0" * 8 + "-" + "0" * 8 + "-" + "0" * 8 + "-" + "0" * 32
                )
    assert history_files(tmp_path) == []
    with pytest.raises(ValueError, match="pitr_retention"):
        SQLiteBackend(tmp_path, pitr_retention=-1)


def leave_a_wal_behind(tmp_path: Path, hex_id: str) -> None:
    """Commit with a raw connection and leave its WAL, as a killed process would.

    Copies of the files are kept and put back after the connection closed
    (closing checkpoints and removes the WAL).
    """
    [path] = tmp_path.rglob(f"{hex_id}.sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("INSERT INTO notes VALUES ('written before the crash')")
    saved = {suffix: Path(f"{path}{suffix}.saved") for suffix in ("", "-wal")}
    for suffix, copy in saved.items():
        shutil.copyfile(f"{path}{suffix}", copy)
    conn.close()
    for suffix, copy in saved.items():
        os.replace(copy, f"{path}{suffix}")
    assert os.path.getsize(f"{path}-wal") > 0


def history_files(tmp_path: Path) -> list[Path]:
    return list(tmp_path.rglob("*.history"))


async def test_history_recovers_from_an_unclean_shutdown(tmp_path: Path) -> None:
    clock = ManualClock(start_ms=START)
    async with Runtime(
        bindings={"N": Notes}, storage=SQLiteBackend(tmp_path), clock=clock
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        await stub.add("one")
        mark = await stub.bookmark()
        hex_id = str(stub.id)
    leave_a_wal_behind(tmp_path, hex_id)
    async with Runtime(
        bindings={"N": Notes}, storage=SQLiteBackend(tmp_path), clock=clock
    ) as rt:
        stub = rt.env.N.get_by_name("a")
        assert (await stub.state())[0] == ["one", "written before the crash"]
        after = await stub.bookmark()
        await restore_now(rt, "a", mark)
        assert (await rt.env.N.get_by_name("a").state())[0] == ["one"]
        await restore_now(rt, "a", after)
        assert (await rt.env.N.get_by_name("a").state())[0] == [
            "one",
            "written before the crash",
        ]


# -- the archiver's worker thread ----------------------------------------------

NS = "notes"
OID = "a" * 64
WORKER = "pyobjects-history"


def put(**values: bytes) -> WriteBatch:
    return WriteBatch(writes=values)


def seq(bookmark: str) -> int:
    return parse_bookmark(NS, OID, bookmark)[0]


def marker(root: Path) -> Path:
    return root / NS / f"{OID}.history-pending"


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WORKER]


def recorded_commits(root: Path) -> int:
    with closing(sqlite3.connect(root / NS / f"{OID}.history")) as conn:
        (count,) = conn.execute("SELECT count(*) FROM commits").fetchone()
    return int(count)


@pytest.fixture
def held_appends(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Appends to histories wait until the returned event is set."""
    release = threading.Event()
    append = History.append

    def held(self: History, *args: Any) -> int:
        release.wait(10)
        return append(self, *args)

    monkeypatch.setattr(History, "append", held)
    yield release
    release.set()


async def reopen_after_restore(
    backend: SQLiteBackend, store: Any, bookmark: str
) -> Any:
    await store.schedule_restore(bookmark, 0)
    return backend.open(NS, OID)  # the next session restores


async def test_a_crash_before_the_worker_wrote_an_archive(
    tmp_path: Path, held_appends: threading.Event
) -> None:
    live = tmp_path / "live"
    backend = SQLiteBackend(live)
    store = backend.open(NS, OID)
    held_appends.set()
    await store.commit(put(k=b"one"))
    first = await store.current_bookmark()
    held_appends.clear()
    await store.commit(put(k=b"two", pad=bytes(10_000)))
    # Archives (the job waits in the worker), checkpoints and closes: the
    # database file has "two", the history does not.
    store.close()
    crashed = tmp_path / "crashed"
    shutil.copytree(live, crashed)  # the process dies here
    held_appends.set()
    await backend.aclose()
    assert marker(crashed).exists()
    assert not marker(live).exists()

    # Without the marker, the gap would go unnoticed: "two" is in no commit.
    unmarked = tmp_path / "unmarked"
    shutil.copytree(crashed, unmarked)
    marker(unmarked).unlink()
    backend = SQLiteBackend(unmarked)
    assert await backend.open(NS, OID).current_bookmark() == first
    await backend.aclose()

    # With it, the next start records the whole database as one commit.
    backend = SQLiteBackend(crashed)
    store = backend.open(NS, OID)
    assert await store.get(["k"]) == {"k": b"two"}
    two = await store.current_bookmark()
    assert seq(two) == seq(first) + 1
    await store.commit(put(k=b"three"))
    store = await reopen_after_restore(backend, store, two)
    assert await store.get(["k", "pad"]) == {"k": b"two", "pad": bytes(10_000)}
    store = await reopen_after_restore(backend, store, first)
    assert await store.get(["k", "pad"]) == {"k": b"one"}
    await backend.aclose()
    assert not marker(crashed).exists()


async def test_reopening_during_an_archive_waits_for_it(
    tmp_path: Path, held_appends: threading.Event
) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, OID)
    held_appends.set()
    await store.commit(put(k=b"one"))
    first = await store.current_bookmark()
    held_appends.clear()
    await store.commit(put(k=b"two"))
    store.close()
    assert marker(tmp_path).exists()
    timer = threading.Timer(0.2, held_appends.set)
    timer.start()
    # The marker is this process's own: reopening the database waits for the
    # archive and records nothing more.
    store = backend.open(NS, OID)
    two = await store.current_bookmark()
    timer.join()
    assert not marker(tmp_path).exists()
    assert seq(two) == seq(first) + 1
    await store.commit(put(k=b"three"))
    store = await reopen_after_restore(backend, store, two)
    assert await store.get(["k"]) == {"k": b"two"}
    await backend.aclose()


async def test_a_failed_append_is_healed_by_recording_the_whole_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, OID)
    await store.commit(put(k=b"one"))
    first = await store.current_bookmark()
    failures = [StorageError("disk full")]
    append = History.append

    def failing(self: History, *args: Any) -> int:
        if failures:
            raise failures.pop()
        return append(self, *args)

    monkeypatch.setattr(History, "append", failing)
    await store.commit(put(k=b"two"))
    with pytest.raises(StorageError, match="cannot update the history: disk full"):
        await store.current_bookmark()
    assert marker(tmp_path).exists()
    await store.commit(put(k=b"three"))
    three = await store.current_bookmark()  # heals: the whole database, once
    assert seq(three) == seq(first) + 1
    assert not marker(tmp_path).exists()
    await store.commit(put(k=b"four"))
    store = await reopen_after_restore(backend, store, three)
    assert await store.get(["k"]) == {"k": b"three"}
    store = await reopen_after_restore(backend, store, first)
    assert await store.get(["k"]) == {"k": b"one"}
    await backend.aclose()


async def test_a_failed_archive_at_close_is_recorded_whole_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, OID)
    await store.commit(put(k=b"one"))
    first = await store.current_bookmark()
    await store.commit(put(k=b"two"))

    def broken(*args: Any) -> Any:
        raise OSError("unreadable WAL")

    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "read_wal_commits", broken)
        store.close()  # closing folds the WAL into the database all the same
    assert marker(tmp_path).exists()
    store = backend.open(NS, OID)
    two = await store.current_bookmark()
    assert seq(two) == seq(first) + 1
    await store.commit(put(k=b"three"))
    store = await reopen_after_restore(backend, store, two)
    assert await store.get(["k"]) == {"k": b"two"}
    await backend.aclose()
    assert not marker(tmp_path).exists()


async def test_aclose_drains_the_worker_and_the_backend_stays_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    append = History.append

    def recording(self: History, *args: Any) -> int:
        threads.append(threading.current_thread().name)
        return append(self, *args)

    monkeypatch.setattr(History, "append", recording)
    backend = SQLiteBackend(tmp_path)
    marks = []
    for round_ in range(2):
        store = backend.open(NS, OID)
        for i in range(300):  # archives on the way
            await store.commit(put(k=str(i).encode(), round=bytes([round_])))
        marks.append(await store.current_bookmark())
        await store.commit(put(last=bytes([round_])))  # archived by aclose()
        await backend.aclose()
        assert workers() == []
        assert not marker(tmp_path).exists()
        # Everything was written: another backend finds the last commit.
        other = SQLiteBackend(tmp_path)
        assert seq(await other.open(NS, OID).current_bookmark()) == seq(marks[-1]) + 1
        await other.aclose()
    assert threads
    assert set(threads) == {WORKER}
    store = await reopen_after_restore(backend, backend.open(NS, OID), marks[0])
    assert await store.get(["k", "round", "last"]) == {"k": b"299", "round": b"\0"}
    await backend.aclose()
    assert workers() == []


async def test_bookmarks_after_a_restore_are_exact(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, OID)
    await store.commit(put(k=b"one"))
    one = await store.current_bookmark()
    await store.commit(WriteBatch(writes={"k": b"two"}, alarm_changed=True, alarm=7))
    store = await reopen_after_restore(backend, store, one)
    assert (await store.get(["k"]), await store.get_alarm()) == ({"k": b"one"}, None)
    # Changes only the KV pages: the page of the alarm must stay as restored.
    await store.commit(put(k=b"three"))
    three = await store.current_bookmark()
    await store.commit(put(k=b"four"))
    store = await reopen_after_restore(backend, store, three)
    assert (await store.get(["k"]), await store.get_alarm()) == ({"k": b"three"}, None)
    await backend.aclose()


async def test_big_commits_are_archived_sooner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "_ARCHIVE_BYTES", 64 * 1024)
    backend = SQLiteBackend(tmp_path)
    store = backend.open(NS, OID)
    for i in range(sqlite._ARCHIVE_FIRST):
        await store.commit(put(k=bytes([i]) * 40_000))
    backend._archiver.wait()
    # The whole (empty) database when it was created, then every commit.
    assert recorded_commits(tmp_path) == 1 + sqlite._ARCHIVE_FIRST
    # Each of these commits is over half the threshold: archived at once.
    await store.commit(put(k=b"x" * 40_000))
    backend._archiver.wait()
    assert recorded_commits(tmp_path) == 2 + sqlite._ARCHIVE_FIRST
    await backend.aclose()


@pytest.mark.parametrize("size", [0, 1, 4096, 16 << 10, (16 << 10) + 1, 1 << 20])
def test_compressed_pages_and_commits_read_back_at_every_size(size: int) -> None:
    # Small inputs take zlib's small hash table, large ones the default: both
    # are plain zlib streams, from bytes and from memoryviews (WAL pages are).
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    data = data[: size // 2] + os.urandom(size - size // 2)
    for given in (data, memoryview(data)):
        assert zlib.decompress(compress(given)) == data
