"""Writer process for the crash tests: acknowledges each write on stdout.

Run as ``python durability_writer.py DIR RUN`` (a SQLiteBackend in DIR) or
``python durability_writer.py --postgres DSN SCHEMA RUN`` (a PostgresBackend
on that schema); it writes until killed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from pyobjects import DurableObject, Runtime
from pyobjects.storage import PostgresBackend, SQLiteBackend, Transaction
from pyobjects.testing import run_in_durable_object

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterable, Mapping

    from pyobjects import DurableObjectState
    from pyobjects.storage import StorageBackend


class Ledger(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS ledger (run INTEGER, i INTEGER,"
            " PRIMARY KEY (run, i))"
        )

    async def record(self, run: int, i: int) -> None:
        # Three keys and an SQL row written without a yield: one atomic batch.
        storage = self.ctx.storage
        storage.put(f"a:{run}:{i:06}", i)
        storage.sql.exec("INSERT INTO ledger (run, i) VALUES (?, ?)", run, i)
        storage.put(f"b:{run}:{i:06}", i)
        storage.put(f"c:{run}:{i:06}", {"i": i, "pad": "x" * 200})

    async def record_txn(self, run: int, i: int) -> None:
        async def closure(txn: Transaction) -> None:
            total = (await txn.get("total")) or 0
            txn.put(f"t:{run}:{i:06}", i)
            await anyio.lowlevel.checkpoint()
            txn.put("total", total + 1)

        await self.ctx.storage.transaction(closure)


def read_acks(proc: subprocess.Popen[str], acks: int) -> list[tuple[str, int, int]]:
    """Read a writer's acknowledgements, ``(kind, object, i)``, until *acks* came.

    Fewer come back if the writer's output ends first (it died).
    """
    seen: list[tuple[str, int, int]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        kind, obj, i = line.split()
        seen.append((kind, int(obj), int(i)))
        if len(seen) >= acks:
            break
    return seen


async def _dump(instance: Any, ctx: DurableObjectState) -> dict[str, Any]:
    """An object's keys and values, plus its SQL rows under ``"@sql"``."""
    rows = ctx.storage.sql.exec("SELECT run, i FROM ledger").raw()
    out: dict[str, Any] = {"@sql": {(run, i) for run, i in rows}}
    start = None
    while True:
        page = (
            await ctx.storage.list(start_after=start, limit=256)
            if start
            else await ctx.storage.list(limit=256)
        )
        if not page:
            return out
        out.update(page)
        start = next(reversed(page))


async def check_ledgers(
    rt: Runtime, acked: Mapping[int, Iterable[tuple[str, int, int]]]
) -> None:
    """Assert that the three ledgers hold every acknowledged write, untorn.

    *acked* holds, per writer run, ``(kind, object, i)`` for each write the
    writer acknowledged.

    Every acknowledged batch has its a, b and c keys and its SQL row; no
    batch is half there (its keys and its row exist together or not at
    all); every transaction wrote its key and bumped the total together.
    """
    for obj in range(3):
        stub = rt.env.LEDGER.get_by_name(f"ledger-{obj}")
        data = await run_in_durable_object(stub, _dump)
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
            present = {
                prefix: {
                    k.split(":")[2] for k in data if k.startswith(f"{prefix}:{run}:")
                }
                for prefix in "abc"
            }
            assert present["a"] == present["b"] == present["c"], (run, obj)
            sql_rows = {f"{i:06}" for r, i in data["@sql"] if r == run}
            assert sql_rows == present["a"], (run, obj)
            txn_keys += sum(1 for k in data if k.startswith(f"t:{run}:"))
        assert data.get("total", 0) == txn_keys, obj


async def main(storage: StorageBackend, run: int) -> None:
    async with Runtime(bindings={"LEDGER": Ledger}, storage=storage) as rt:
        ns = rt.env.LEDGER
        out = sys.stdout

        async def writer(obj: int, worker: int) -> None:
            stub: Any = ns.get_by_name(f"ledger-{obj}")
            i = worker
            while True:
                if i % 2:
                    await stub.record_txn(run, i)
                    out.write(f"txn {obj} {i}\n")
                else:
                    await stub.record(run, i)
                    out.write(f"ack {obj} {i}\n")
                out.flush()
                i += 16

        async with anyio.create_task_group() as tg:
            for obj in range(3):
                for worker in range(16):
                    tg.start_soon(writer, obj, worker)


if __name__ == "__main__":
    if sys.argv[1] == "--postgres":
        _, _, dsn, schema, run = sys.argv
        # A small pool: several writers share the test server. No history
        # kept: every snapshot prunes the log before it, so kills land there
        # too.
        backend: StorageBackend = PostgresBackend(
            dsn, schema=schema, pool_size=4, pitr_retention=0
        )
    else:
        _, directory, run = sys.argv
        backend = SQLiteBackend(directory)
    anyio.run(main, backend, int(run))
