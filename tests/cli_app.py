"""A worker for the ``pyobjects serve`` tests (imported by a subprocess)."""

from __future__ import annotations

import gc
from typing import Any

import pyobjects
from pyobjects import AlarmInfo, DurableObject, Request, Response
from pyobjects.asgi import App


class Counter(DurableObject):
    async def fetch(self, request: Request) -> Response:
        value = (await self.ctx.storage.get("value") or 0) + 1
        self.ctx.storage.put("value", value)
        if request.query == "alarm":
            self.ctx.storage.set_alarm(self.ctx.now_ms() + 3_600_000)
        return Response(str(value))

    async def alarm(self, alarm_info: AlarmInfo) -> None:
        """Never reached in the tests (an hour away)."""


async def fetch(request: Request, env: Any) -> Response:
    if request.path == "/gc-frozen":  # pyobjects serve froze the start-up objects
        return Response(str(gc.get_freeze_count()))
    name = request.path.strip("/") or "global"
    response: Response = await env.COUNTER.get_by_name(name).fetch(request)
    return response


worker = pyobjects.Worker(fetch, bindings={"COUNTER": Counter})
not_a_worker = 42
app = App(worker)
