"""The worker the chaos tests run on every node (``tests/cluster/test_chaos.py``).

Routes (all ``GET``):

- ``/incr/<name>``: increment counter *name*, answer its new value;
- ``/late/<name>``: on counter *name*, wait, then write the key ``late``
  (the write a paused node attempts when it wakes);
- ``/tick``: start the ticker, an object whose alarm re-arms itself every
  ``TICK_MS`` and counts its runs in storage; ``/runs``: that count.

A pyobjects error is answered ``503`` when it is retryable and ``500``
otherwise, with its type, message and the type of its cause, so the tests
can tell them apart.
The ticker appends ``run pid epoch_seconds`` to ``ticks.log`` in the node's
working directory once each run is durable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio

import pyobjects
from pyobjects import AlarmInfo, DurableObject, PyObjectsError, Request, Response

TICK_MS = 200
LATE_SECONDS = 0.5


class Counter(DurableObject):
    async def incr(self) -> int:
        value = int(await self.ctx.storage.get("value") or 0) + 1
        self.ctx.storage.put("value", value)
        return value

    async def late(self) -> str:
        # Tell the test this call is under way on this node, then give it
        # time to pause the node before the write.
        Path(f"late-{os.getpid()}").touch()  # noqa: ASYNC240 - an empty file
        await anyio.sleep(LATE_SECONDS)
        self.ctx.storage.put("late", os.getpid())
        return "written"

    async def read(self) -> dict[str, Any]:
        return dict(await self.ctx.storage.get(["value", "late"]))


class Ticker(DurableObject):
    async def start(self) -> None:
        if await self.ctx.storage.get_alarm() is None:
            self.ctx.storage.set_alarm(self.ctx.now_ms() + TICK_MS)

    async def alarm(self, alarm_info: AlarmInfo) -> None:
        runs = int(await self.ctx.storage.get("runs") or 0) + 1
        self.ctx.storage.put("runs", runs)
        self.ctx.storage.set_alarm(self.ctx.now_ms() + TICK_MS)
        await self.ctx.storage.sync()  # recorded below only once it is kept
        with open("ticks.log", "a") as log:  # noqa: ASYNC230 - one short line
            log.write(f"{runs} {os.getpid()} {time.time():.3f}\n")

    async def runs(self) -> int:
        return int(await self.ctx.storage.get("runs") or 0)


async def fetch(request: Request, env: Any) -> Response:
    route, _, name = request.path.strip("/").partition("/")
    try:
        if route == "incr":
            return Response(str(await env.COUNTER.get_by_name(name).incr()))
        if route == "late":
            return Response(await env.COUNTER.get_by_name(name).late())
        if route == "tick":
            await env.TICKER.get_by_name("ticker").start()
            return Response("started")
        if route == "runs":
            return Response(str(await env.TICKER.get_by_name("ticker").runs()))
    except PyObjectsError as exc:
        retryable = bool(getattr(exc, "retryable", False))
        cause = exc.__cause__
        text = f"{type(exc).__name__}: {exc}"
        if cause is not None:
            text += f" (cause: {type(cause).__name__})"
        return Response(text, status=503 if retryable else 500)
    return Response("not found", status=404)


worker = pyobjects.Worker(fetch, bindings={"COUNTER": Counter, "TICKER": Ticker})
