"""A write the caller was told succeeded survives a SIGKILL of the process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pyobjects import Runtime
from pyobjects.storage import SQLiteBackend

from .durability_writer import Ledger, check_ledgers, read_acks

WRITER = Path(__file__).with_name("durability_writer.py")
RUNS = 8

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def _kill_after_acks(
    directory: Path, run: int, acks: int
) -> list[tuple[str, int, int]]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        seen = read_acks(proc, acks)
        if len(seen) < acks:  # pragma: no cover  # the writer died on its own
            raise AssertionError(
                f"writer exited early: {proc.stderr.read() if proc.stderr else ''}"
            )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    return seen


async def test_acknowledged_writes_survive_sigkill(
    tmp_path: Path, anyio_backend: str
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("one subprocess run is enough; the writer uses asyncio")
    rng = random.Random(1234)
    directory = tmp_path / "data"
    acked: dict[int, set[tuple[str, int, int]]] = {}
    for run in range(RUNS):
        acked[run] = set(_kill_after_acks(directory, run, rng.randrange(50, 400)))

    async with Runtime(
        bindings={"LEDGER": Ledger}, storage=SQLiteBackend(directory)
    ) as rt:
        await check_ledgers(rt, acked)
