"""A durable counter on SQLite storage: run it twice and watch it keep counting.

    python examples/counter.py [DATA_DIR]

Each run adds 1 to the counter named "global" (plus 1 to a counter per run
of 10 concurrent increments, to show they never lose an update), then
prints the values. The data lives in DATA_DIR (default ./.pyobjects-example),
so the next run starts where this one stopped.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from pyobjects import DurableObject, DurableObjectState, Runtime
from pyobjects.storage import SQLiteBackend


class Counter(DurableObject):
    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        self.value = 0
        # The first call waits until the stored value is loaded.
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        self.value = (await self.ctx.storage.get("value")) or 0

    async def increment(self, by: int = 1) -> int:
        self.value += by
        self.ctx.storage.put("value", self.value)  # no await needed
        return self.value  # delivered only once the write is durable

    async def get(self) -> int:
        return self.value


async def main(directory: str) -> None:
    async with Runtime(
        bindings={"COUNTER": Counter}, storage=SQLiteBackend(directory)
    ) as rt:
        counter = rt.env.COUNTER.get_by_name("global")
        before = await counter.get()
        after = await counter.increment()
        print(f"counter 'global': {before} -> {after} (stored in {directory})")

        burst = rt.env.COUNTER.get_by_name("burst")
        start = await burst.get()
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(burst.increment)
        print(
            f"counter 'burst': {start} -> {await burst.get()} "
            "after 10 concurrent increments"
        )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else ".pyobjects-example")
