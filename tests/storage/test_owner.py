"""One owner per SQLiteBackend directory: a second runtime is refused at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from pyobjects import DurableObject, Runtime, StorageError, StorageInUseError
from pyobjects._cli_commands import cli
from pyobjects.storage import MemoryBackend, SQLiteBackend

ROOT = Path(__file__).parent.parent.parent

# A runtime that writes once, says so, and then holds the directory forever.
HOLDER = """
import sys, anyio
from pyobjects import DurableObject, Runtime
from pyobjects.storage import SQLiteBackend

class Counter(DurableObject):
    async def increment(self) -> int:
        value = (await self.ctx.storage.get("value") or 0) + 1
        self.ctx.storage.put("value", value)
        return value

async def main() -> None:
    backend = SQLiteBackend(sys.argv[1])
    async with Runtime(bindings={"COUNTER": Counter}, storage=backend) as rt:
        await rt.env.COUNTER.get_by_name("c").increment()
        print("ready", flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


class Counter(DurableObject):
    async def increment(self) -> int:
        value: int = (await self.ctx.storage.get("value") or 0) + 1
        self.ctx.storage.put("value", value)
        return value


def _runtime(storage: Path | SQLiteBackend) -> Runtime:
    if not isinstance(storage, SQLiteBackend):
        storage = SQLiteBackend(storage)
    return Runtime(bindings={"COUNTER": Counter}, storage=storage)


async def test_a_second_runtime_in_this_process_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    backend = SQLiteBackend(directory)
    async with _runtime(backend) as first:
        counter = first.env.COUNTER.get_by_name("c")
        assert await counter.increment() == 1
        # Another backend on the directory, and the same backend again.
        for storage in (SQLiteBackend(directory), backend):
            second = _runtime(storage)
            with pytest.raises(StorageInUseError) as info:
                async with second:
                    pytest.fail("the second runtime ran")  # pragma: no cover
            error = info.value
            assert isinstance(error, StorageError)
            assert error.directory == str(directory)
            assert error.pid == os.getpid()
            assert str(directory) in str(error)
            assert f"this process (PID {os.getpid()})" in str(error)
        # The refusal changed nothing for the owner.
        assert await counter.increment() == 2
    # Leaving the runtime released the directory, for the same backend and
    # for another one.
    async with _runtime(backend) as again:
        assert await again.env.COUNTER.get_by_name("c").increment() == 3
    async with _runtime(directory) as other:
        assert await other.env.COUNTER.get_by_name("c").increment() == 4


async def test_a_crashed_runtime_releases_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    async with _runtime(directory) as rt:
        await rt.env.COUNTER.get_by_name("c").increment()
        await rt._crash()
        async with _runtime(directory) as after:
            assert await after.env.COUNTER.get_by_name("c").increment() == 2


async def test_a_refused_start_can_be_retried(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    waiting = _runtime(directory)
    async with _runtime(directory):
        with pytest.raises(StorageInUseError):
            await waiting.__aenter__()
    async with waiting as rt:
        assert await rt.env.COUNTER.get_by_name("c").increment() == 1


async def test_memory_backends_are_not_claimed() -> None:
    storage = MemoryBackend()
    assert not hasattr(storage, "claim")
    async with Runtime(bindings={"COUNTER": Counter}, storage=storage) as rt:
        await rt.env.COUNTER.get_by_name("c").increment()


async def test_the_lock_file_is_not_a_namespace(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    backend = SQLiteBackend(directory)
    async with _runtime(backend) as rt:
        await rt.env.COUNTER.get_by_name("c").increment()
        assert (directory / "@lock").read_text() == f"{os.getpid()}\n"
        assert await backend.list_namespaces() == ["COUNTER"]
    assert (directory / "@lock").read_text() == ""  # no stale PID left


@pytest.mark.skipif(sys.platform == "win32", reason="needs flock and SIGKILL")
def test_another_process_is_refused_until_the_holder_is_killed(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line == "ready\n", holder.stderr.read() if holder.stderr else ""

        async def start() -> int:
            async with _runtime(directory) as rt:
                value: int = await rt.env.COUNTER.get_by_name("c").increment()
                return value

        with pytest.raises(StorageInUseError) as info:
            anyio.run(start)
        assert info.value.pid == holder.pid
        assert f"in use by process {holder.pid}" in str(info.value)
        assert str(directory) in str(info.value)

        served = CliRunner().invoke(
            cli,
            [
                "serve",
                "--app-dir",
                str(ROOT),
                "tests.cli_app:worker",
                "--storage",
                str(directory),
                "--port",
                "0",
            ],
        )
        assert served.exit_code == 1, served.output
        assert f"cannot serve: storage directory {str(directory)!r}" in served.output
        assert f"in use by process {holder.pid}" in served.output

        # inspect reads while the holder serves, and never checkpoints the
        # WAL under it (its history archiver must see every commit).
        (database,) = (directory / "COUNTER").glob("*.sqlite")
        wal = database.with_name(database.name + "-wal")
        before = wal.read_bytes()
        assert before  # the holder's commit is still in the WAL
        shown = CliRunner().invoke(
            cli, ["inspect", "--storage", str(directory), "COUNTER", "c"]
        )
        assert shown.exit_code == 0, shown.output
        assert "'value': 1" in shown.output
        assert wal.read_bytes() == before
        assert holder.poll() is None  # refusing touched nothing of the holder's
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
    assert holder.returncode == -signal.SIGKILL
    # The OS released the dead process's lock: the directory is free, and the
    # holder's acknowledged write is there.
    assert anyio.run(start) == 2


def _unwritable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make creating or writing the lock file fail as in a read-only directory."""
    real_open = os.open

    def fake_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr("pyobjects.storage._lock.os.open", fake_open)


@pytest.mark.skipif(sys.platform == "win32", reason="needs flock")
async def test_an_unwritable_directory_is_still_locked_if_it_has_a_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "data"
    async with _runtime(directory):
        pass  # leaves data/@lock behind
    _unwritable(monkeypatch)
    async with _runtime(directory):
        # Locked through a read-only descriptor: a second runtime is refused.
        with pytest.raises(StorageInUseError) as info:
            async with _runtime(directory):
                pytest.fail("the second runtime ran")  # pragma: no cover
        assert info.value.pid is None  # nobody could write a PID
        assert "in use by another Runtime (its PID could not be read)" in str(
            info.value
        )


async def test_an_unwritable_directory_without_a_lock_file_starts_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    _unwritable(monkeypatch)
    async with _runtime(directory):
        pass
    assert "cannot create the lock file" in caplog.text
    assert not (directory / "@lock").exists()
