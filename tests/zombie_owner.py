"""An owner process that test_postgres_crash stops, fences and wakes again.

Run as ``python zombie_owner.py DSN SCHEMA LEASE_TTL``. It starts the object
``register`` on a PostgresBackend, writes ``a:1`` (KV and SQL) and prints
``held``; then it waits for a line on stdin, writes ``a:2`` and prints what
that write got (``ok``, or ``error`` with the exception's type, its cause's
type and its ``retryable`` and ``durable_object_reset`` flags); then it
tries once more with a new stub, prints that outcome too, and exits.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from pyobjects import DurableObject, Runtime
from pyobjects.storage import PostgresBackend


class Register(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS writes (key TEXT PRIMARY KEY, owner TEXT)"
        )

    async def write(self, key: str, owner: str) -> None:
        # A KV key and an SQL row in one batch.
        self.ctx.storage.put(key, owner)
        self.ctx.storage.sql.exec("INSERT INTO writes VALUES (?, ?)", key, owner)


def outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    cause = exc.__cause__
    return (
        f"error {type(exc).__name__} {type(cause).__name__}"
        f" retryable={getattr(exc, 'retryable', None)}"
        f" reset={getattr(exc, 'durable_object_reset', None)}"
    )


async def main(dsn: str, schema: str, ttl: float) -> None:
    backend = PostgresBackend(dsn, schema=schema, lease_ttl=ttl, pool_size=2)
    async with Runtime(bindings={"REGISTER": Register}, storage=backend) as rt:
        stub: Any = rt.env.REGISTER.get_by_name("register")
        await stub.write("a:1", "A")
        print("held", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        for key in ("a:2", "a:3"):
            error: BaseException | None = None
            try:
                await stub.write(key, "A")
            except Exception as exc:
                error = exc
            print(outcome(error), flush=True)
            # After a reset only a new stub reaches a new instance.
            stub = rt.env.REGISTER.get_by_name("register")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]))
