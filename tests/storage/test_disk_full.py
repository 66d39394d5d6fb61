"""A full disk (SQLITE_FULL) on SQLiteBackend: no torn batch, typed errors (#11).

The disk is filled deterministically: ``PRAGMA max_page_count`` caps an
object's database at its current size (SQLite then fails a statement that
needs a new page with a real ``SQLITE_FULL``), and a connection factory
injects ``SQLITE_FULL`` where no cap can, at ``COMMIT`` and in the alarm index.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    Runtime,
    SqlError,
    StorageError,
    StorageFullError,
)
from pyobjects.storage import SQLiteBackend, sqlite
from pyobjects.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import Callable

PITR = pytest.mark.parametrize("pitr", [0, 86_400], ids=["history-off", "history-on"])


class Box(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS t (v BLOB)")

    async def add(self, key: str, size: int) -> None:
        """One batch: a KV put of *size* bytes and a small SQL row."""
        self.ctx.storage.sql.exec("INSERT INTO t VALUES (?)", key.encode())
        self.ctx.storage.put(key, b"x" * size)

    async def add_sql(self, size: int) -> None:
        self.ctx.storage.put("before-sql", 1)
        self.ctx.storage.sql.exec("INSERT INTO t VALUES (randomblob(?))", size)

    async def add_then_catch(self, size: int) -> str | None:
        self.ctx.storage.sql.exec("INSERT INTO t VALUES (x'01')")
        try:
            self.ctx.storage.sql.exec("INSERT INTO t VALUES (randomblob(?))", size)
        except SqlError as exc:
            self.ctx.storage.put("caught", exc.code)
            return exc.code
        return None

    async def alarm_in(self, ms: int) -> None:
        self.ctx.storage.put("alarm-set", True)
        self.ctx.storage.set_alarm(self.ctx.now_ms() + ms)

    async def alarm(self, info: Any) -> None:
        pass

    async def state(self) -> tuple[list[str], int, Any]:
        keys = [k for k in (await self.ctx.storage.list()) if k != "caught"]
        rows = self.ctx.storage.sql.exec("SELECT count(*) AS n FROM t").one()["n"]
        return keys, int(rows), await self.ctx.storage.get("caught")

    async def bookmark(self) -> str:
        return await self.ctx.storage.get_current_bookmark()


def fill(conn: sqlite3.Connection) -> None:
    """No new page from now on: the database is full."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")


def full_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL
    error.sqlite_errorname = "SQLITE_FULL"
    return error


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """SQLITE_FULL on statements that start with a given text, so many times.

    Every connection the backend opens gets it (its own factory, if any, is
    kept as the base class).
    """
    armed: dict[str, int] = {}
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def faulty_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        base = kwargs.pop("factory", sqlite3.Connection)

        class Faulty(base):  # type: ignore[misc,valid-type]
            def execute(self, sql: str, *rest: Any) -> sqlite3.Cursor:
                for prefix, count in armed.items():
                    if count and sql.startswith(prefix):
                        armed[prefix] = count - 1
                        raise full_error()
                return super().execute(sql, *rest)  # type: ignore[no-any-return]

        return connect(*args, factory=Faulty, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", faulty_connect)
    return armed


def assert_full_reset(exc: BaseException) -> None:
    assert isinstance(exc, DurableObjectResetError)
    assert exc.durable_object_reset
    cause = exc.__cause__
    assert isinstance(cause, StorageFullError), repr(cause)
    assert "disk or the database is full" in str(exc)
    assert cause.target.startswith("object B/")
    assert cause.__cause__ is not None


@PITR
async def test_a_full_database_fails_the_whole_batch_and_recovers(
    tmp_path: Path, pitr: int
) -> None:
    backend = SQLiteBackend(tmp_path, pitr_retention=pitr)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=ManualClock()) as rt:
        box = rt.env.B.get_by_name("full")
        other = rt.env.B.get_by_name("other")
        await other.add("o", 10)
        await box.add("a", 10)  # acknowledged: must survive everything below
        key = ("B", str(box.id))
        for attempt in range(2):
            fill(backend._connections[key])
            with pytest.raises(DurableObjectResetError) as info:
                await box.add("big", 100_000)  # the SQL row fits, the value not
            assert_full_reset(info.value)
            # Nothing of the failed batch, everything acknowledged before it.
            box = rt.env.B.get_by_name("full")
            assert await box.state() == (["a"], 1, None)
            # Other objects read and write as before.
            await other.add(f"o{attempt}", 10)
            assert (await other.state())[1] == 2 + attempt
        # Space freed (the reset closed the capped connection): it works again.
        await box.add("big", 100_000)
        assert await rt.env.B.get_by_name("full").state() == (["a", "big"], 2, None)
    backend = SQLiteBackend(tmp_path, pitr_retention=pitr)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=ManualClock()) as rt:
        assert await rt.env.B.get_by_name("full").state() == (["a", "big"], 2, None)


@PITR
async def test_a_full_database_during_a_statement_raises_sql_error(
    tmp_path: Path, pitr: int
) -> None:
    backend = SQLiteBackend(tmp_path, pitr_retention=pitr)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=ManualClock()) as rt:
        box = rt.env.B.get_by_name("full")
        await box.add("a", 10)
        fill(backend._connections[("B", str(box.id))])
        # SQLite undoes the transaction, which held no SQL write of the
        # batch: a typed SqlError, never sqlite3.OperationalError; the KV
        # write made before it commits (an exception commits what was
        # written, as in Cloudflare).
        with pytest.raises(SqlError, match="SQLITE_FULL") as info:
            await box.add_sql(100_000)
        assert info.value.code == "SQLITE_FULL"
        assert not isinstance(info.value, sqlite3.Error)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert await box.state() == (["a", "before-sql"], 1, None)


@PITR
async def test_a_full_database_under_pending_sql_writes_resets(
    tmp_path: Path, pitr: int
) -> None:
    backend = SQLiteBackend(tmp_path, pitr_retention=pitr)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=ManualClock()) as rt:
        box = rt.env.B.get_by_name("full")
        await box.add("a", 10)
        fill(backend._connections[("B", str(box.id))])
        # SQLITE_FULL rolls back the whole transaction, and with it a row
        # the batch inserted before: the object resets, even though the
        # code catches the error, and nothing of the batch is kept.
        with pytest.raises(DurableObjectResetError) as info:
            await box.add_then_catch(100_000)
        assert info.value.durable_object_reset
        assert await rt.env.B.get_by_name("full").state() == (["a"], 1, None)


@PITR
async def test_a_commit_that_fails_full_leaves_nothing(
    tmp_path: Path, pitr: int, faults: dict[str, int]
) -> None:
    backend = SQLiteBackend(tmp_path, pitr_retention=pitr)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=ManualClock()) as rt:
        box = rt.env.B.get_by_name("full")
        await box.add("a", 10)
        faults["COMMIT"] = 1  # the batch's SQL and KV writes are all in, then:
        with pytest.raises(DurableObjectResetError) as info:
            await box.add("b", 10)
        assert_full_reset(info.value)
        assert await rt.env.B.get_by_name("full").state() == (["a"], 1, None)
        await rt.env.B.get_by_name("full").add("b", 10)
        assert await rt.env.B.get_by_name("full").state() == (["a", "b"], 2, None)


async def test_a_full_alarm_index_fails_the_batch(
    tmp_path: Path, faults: dict[str, int]
) -> None:
    backend = SQLiteBackend(tmp_path)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=ManualClock()) as rt:
        box = rt.env.B.get_by_name("full")
        await box.add("a", 10)
        faults["INSERT OR REPLACE INTO alarms"] = 1
        with pytest.raises(DurableObjectResetError) as info:
            await box.alarm_in(1_000)
        cause = info.value.__cause__
        assert isinstance(cause, StorageFullError)
        assert cause.target == "the alarm index"
        assert await rt.env.B.get_by_name("full").state() == (["a"], 1, None)
        await rt.env.B.get_by_name("full").alarm_in(1_000)  # room again
        assert (await rt.env.B.get_by_name("full").state())[0] == ["a", "alarm-set"]


async def test_an_unwritable_history_does_not_stop_reads_or_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    backend = SQLiteBackend(tmp_path, pitr_retention=86_400)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=clock) as rt:
        box = rt.env.B.get_by_name("h")
        await box.add("a", 10)
        object_id = str(box.id)
    # The history's marker cannot be created (a directory is in the way),
    # so the history cannot be brought up to date when the object opens.
    marker = tmp_path / "B" / f"{object_id}.history-pending"
    marker.mkdir()
    backend = SQLiteBackend(tmp_path, pitr_retention=86_400)
    with caplog.at_level(logging.WARNING, logger="pyobjects"):
        async with Runtime(bindings={"B": Box}, storage=backend, clock=clock) as rt:
            box = rt.env.B.get_by_name("h")
            assert await box.state() == (["a"], 1, None)
            for i in range(sqlite._ARCHIVE_FIRST + 2):  # archives are due
                await box.add(f"k{i:02}", 10)
            assert len((await box.state())[0]) == sqlite._ARCHIVE_FIRST + 3
            with pytest.raises(StorageError, match="history"):
                await box.bookmark()
            marker.rmdir()  # writable again: the history is recorded whole
            assert (await box.bookmark()).startswith("0")
    assert "cannot write the point-in-time history" in caplog.text
    backend = SQLiteBackend(tmp_path, pitr_retention=86_400)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=clock) as rt:
        state = await rt.env.B.get_by_name("h").state()
        assert len(state[0]) == sqlite._ARCHIVE_FIRST + 3


async def test_an_archive_that_fails_after_a_commit_keeps_the_commit(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    backend = SQLiteBackend(tmp_path, pitr_retention=86_400)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=clock) as rt:
        box = rt.env.B.get_by_name("h")
        await box.add("a", 10)
        await box.bookmark()  # the history is up to date, no marker left
        marker = tmp_path / "B" / f"{box.id}.history-pending"
        marker.mkdir()
        # Each commit succeeds although archiving after it fails.
        for i in range(2 * sqlite._ARCHIVE_FIRST):
            await box.add(f"k{i:02}", 10)
    backend = SQLiteBackend(tmp_path, pitr_retention=86_400)
    async with Runtime(bindings={"B": Box}, storage=backend, clock=clock) as rt:
        keys, rows, _ = await rt.env.B.get_by_name("h").state()
        assert (len(keys), rows) == (1 + 2 * sqlite._ARCHIVE_FIRST,) * 2


_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import anyio
    from pyobjects import DurableObjectResetError, Runtime
    from pyobjects.storage import SQLiteBackend
    from tests.storage.test_disk_full import Box, fill

    async def main(directory):
        backend = SQLiteBackend(directory, pitr_retention=86_400)
        async with Runtime(bindings={"B": Box}, storage=backend) as rt:
            box = rt.env.B.get_by_name("w")
            await box.add("k000", 10)
            print("ack k000", flush=True)
            await box.bookmark()  # the history is up to date: no marker now
            # From now on no archive of the history can be written.
            os.mkdir(os.path.join(directory, "B", f"{box.id}.history-pending"))
            for i in range(1, 60):
                key = f"k{i:03}"
                if i % 3 == 0:  # the disk is full for this batch only
                    fill(backend._connections[("B", str(box.id))])
                    try:
                        await box.add(key, 100_000)
                    except DurableObjectResetError:
                        print("fail", key, flush=True)
                        box = rt.env.B.get_by_name("w")
                        continue
                    raise AssertionError("the full batch committed")
                await box.add(key, 10)
                print("ack", key, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown

    anyio.run(main, sys.argv[1])
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
async def test_acknowledged_writes_survive_a_full_disk_and_a_kill(
    tmp_path: Path, anyio_backend: str
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("one subprocess run is enough")
    root = Path(__file__).parents[2]
    with anyio.fail_after(60):
        proc = await anyio.run_process(
            [sys.executable, "-c", _WRITER, str(tmp_path)],
            cwd=root,
            env=dict(os.environ, PYTHONPATH=str(root)),
            check=False,
        )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    lines = [line.split() for line in proc.stdout.decode().splitlines()]
    acked = [key for kind, key in lines if kind == "ack"]
    failed = [key for kind, key in lines if kind == "fail"]
    assert (len(acked), len(failed)) == (41, 19)
    backend = SQLiteBackend(tmp_path, pitr_retention=86_400)
    async with Runtime(bindings={"B": Box}, storage=backend) as rt:
        keys, rows, _ = await rt.env.B.get_by_name("w").state()
    assert keys == acked  # every acknowledged batch, none of the failed ones
    assert rows == len(acked)
