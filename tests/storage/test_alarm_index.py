"""A corrupt or unreadable alarm index does not stop the runtime (#11)."""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING, Any

import pytest

from pyobjects import DurableObject, DurableObjectResetError, Runtime
from pyobjects.storage import SQLiteBackend, WriteBatch
from pyobjects.storage.sqlite import read_only_backend
from pyobjects.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

GARBAGE = b"\x8f this is not a database \x00" * 200


class Alarmed(DurableObject):
    fired: list[str] = []  # noqa: RUF012

    async def alarm(self, info: Any) -> None:
        type(self).fired.append(str(self.ctx.id.name))

    async def set_in(self, ms: int) -> None:
        self.ctx.storage.set_alarm(self.ctx.now_ms() + ms)

    async def touch(self) -> None:
        self.ctx.storage.put("touched", True)

    async def touched(self) -> bool:
        return bool(await self.ctx.storage.get("touched"))


@pytest.fixture(autouse=True)
def _reset_fired() -> None:
    Alarmed.fired = []


def index_rows(root: Path) -> list[tuple[str, str, int]]:
    with closing(sqlite3.connect(root / "@metadata.sqlite")) as conn:
        return sorted(conn.execute("SELECT namespace, object_id, time_ms FROM alarms"))


async def make_alarms(root: Path, clock: ManualClock) -> dict[str, int]:
    """Three objects with alarms, one with data only; returns name -> time."""
    times = {}
    async with Runtime(
        bindings={"A": Alarmed}, storage=SQLiteBackend(root), clock=clock
    ) as rt:
        for i, name in enumerate(["a", "b", "c"]):
            await rt.env.A.get_by_name(name).set_in(1_000 * (i + 1))
            times[name] = clock.now_ms() + 1_000 * (i + 1)
        await rt.env.A.get_by_name("quiet").touch()
    return times


def break_index(root: Path) -> None:
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{root}/@metadata.sqlite{suffix}"):
            os.remove(f"{root}/@metadata.sqlite{suffix}")
    (root / "@metadata.sqlite").write_bytes(GARBAGE)


async def test_a_garbage_index_is_rebuilt_from_the_object_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    times = await make_alarms(tmp_path, clock)
    break_index(tmp_path)
    with caplog.at_level(logging.ERROR, logger="pyobjects"):
        async with Runtime(
            bindings={"A": Alarmed}, storage=SQLiteBackend(tmp_path), clock=clock
        ) as rt:
            assert "cannot be read" in caplog.text
            assert "finding the alarms in the object databases" in caplog.text
            assert "moved to @metadata.sqlite.corrupt and rebuilt" in caplog.text
            ids = {name: str(rt.env.A.id_from_name(name)) for name in times}
            assert index_rows(tmp_path) == sorted(
                ("A", ids[name], at) for name, at in times.items()
            )
            await clock.advance(3_000)
            assert Alarmed.fired == ["a", "b", "c"]
            assert await rt.env.A.get_by_name("quiet").touched()
    # The broken file is kept for inspection; the new index is a sound one.
    assert (tmp_path / "@metadata.sqlite.corrupt").read_bytes() == GARBAGE
    assert index_rows(tmp_path) == []


async def test_the_backend_rebuilds_a_corrupt_index(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open("ns", "1" * 64).commit(
        WriteBatch(alarm_changed=True, alarm=5_000)
    )
    await backend.open("ns", "2" * 64).commit(WriteBatch(writes={"k": b"v"}))
    await backend.aclose()
    break_index(tmp_path)
    backend = SQLiteBackend(tmp_path)
    [entry] = await backend.pending_alarms()
    assert (entry.namespace, entry.object_id, entry.time_ms) == ("ns", "1" * 64, 5_000)
    assert entry.retry_count == 0  # counts lived in the index: they start over
    assert await backend.pending_alarms() == [entry]  # from the new index
    await backend.aclose()


def _index_cannot_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening the index fails as in a directory that cannot be written."""
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def fake_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if str(database).endswith("@metadata.sqlite"):
            error = sqlite3.OperationalError("unable to open database file")
            error.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN
            raise error
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", fake_connect)


async def test_an_index_that_cannot_be_opened_fails_only_new_alarms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    times = await make_alarms(tmp_path, clock)
    _index_cannot_open(monkeypatch)
    with caplog.at_level(logging.ERROR, logger="pyobjects"):
        async with Runtime(
            bindings={"A": Alarmed}, storage=SQLiteBackend(tmp_path), clock=clock
        ) as rt:
            assert "finding the alarms in the object databases" in caplog.text
            assert "corrupt" not in caplog.text
            assert "cannot write a new alarm index" in caplog.text
            assert "the 3 alarms found fire in this run" in caplog.text
            # The alarms in the object files still fire...
            await clock.advance(3_000)
            assert sorted(Alarmed.fired) == sorted(times)
            # ... objects work ...
            await rt.env.A.get_by_name("quiet").touch()
            # ... and only what needs the index fails: a new alarm.
            with pytest.raises(DurableObjectResetError, match="alarm index"):
                await rt.env.A.get_by_name("new").set_in(1_000)
    assert (tmp_path / "@metadata.sqlite").exists()  # not moved: not corrupt


async def test_a_read_only_backend_reads_around_a_corrupt_index(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path)
    await backend.open("ns", "1" * 64).commit(
        WriteBatch(alarm_changed=True, alarm=5_000)
    )
    await backend.aclose()
    break_index(tmp_path)
    reader = read_only_backend(tmp_path)  # pyobjects inspect
    [entry] = await reader.pending_alarms()
    assert entry.time_ms == 5_000
    await reader.aclose()
    # It wrote nothing: the corrupt index is where it was.
    assert (tmp_path / "@metadata.sqlite").read_bytes() == GARBAGE
    assert not (tmp_path / "@metadata.sqlite.corrupt").exists()
