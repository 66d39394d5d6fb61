"""A write the caller was told succeeded survives a SIGKILL of the process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyobjects
from pyobjects import Runtime
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import run_in_durable_object

from .durability_writer import Ledger

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
    seen: list[tuple[str, int, int]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, obj, i = line.split()
            seen.append((kind, int(obj), int(i)))
            if len(seen) >= acks:
                break
        else:  # pragma: no cover  # the writer died on its own
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
        for obj in range(3):
            stub = rt.env.LEDGER.get_by_name(f"ledger-{obj}")

            async def dump(
                instance: Any, ctx: pyobjects.DurableObjectState
            ) -> dict[str, Any]:
                rows = ctx.storage.sql.exec("SELECT run, i FROM ledger").raw()
                out: dict[str, Any] = {"@sql": {(run, i) for run, i in rows}}
                start = None
                while True:
                    page = (
                        await ctx.storage.list(start_after=start, limit=128)
                        if start
                        else await ctx.storage.list(limit=128)
                    )
                    if not page:
                        return out
                    out.update(page)
                    start = next(reversed(page))

            data = await run_in_durable_object(stub, dump)
            txn_keys = 0
            for run, seen in acked.items():
                for kind, o, i in seen:
                    if o != obj:
                        continue
                    if kind == "ack":
                        for prefix in "abc":
                            assert f"{prefix}:{run}:{i:06}" in data, (run, obj, i)
                        assert (run, i) in data["@sql"], (run, obj, i)
                    else:
                        assert f"t:{run}:{i:06}" in data, (run, obj, i)
                # No batch is half-applied: a, b and c exist together or not at all.
                present = {
                    prefix: {
                        k.split(":")[2]
                        for k in data
                        if k.startswith(f"{prefix}:{run}:")
                    }
                    for prefix in "abc"
                }
                assert present["a"] == present["b"] == present["c"]
                # ... and the SQL row of the same batch with them.
                sql_rows = {f"{i:06}" for r, i in data["@sql"] if r == run}
                assert sql_rows == present["a"]
                txn_keys += sum(1 for k in data if k.startswith(f"t:{run}:"))
            # Every transaction wrote its key and bumped the total together.
            assert data.get("total", 0) == txn_keys
