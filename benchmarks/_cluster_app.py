"""The worker of ``benchmarks/cluster.py --only procs`` (run by ``pyobjects serve``).

``GET /read``, ``GET /incr`` and ``GET /where`` call the RPC method of that
name on the object ``bench`` and answer its result as text.
"""

from __future__ import annotations

from typing import Any

import pyobjects
from pyobjects import DurableObject, Request, Response


class Counter(DurableObject):
    """One durable counter; ``where()`` names the node that runs it."""

    async def reset(self) -> None:
        self.ctx.storage.put("n", 0)

    async def read(self) -> int:
        return await self.ctx.storage.get("n") or 0

    async def incr(self) -> int:
        storage = self.ctx.storage
        v = await storage.get("n") or 0
        storage.put("n", v + 1)
        return v + 1

    async def where(self) -> str:
        return str(self.env.NODE)


METHODS = frozenset({"read", "incr", "where"})


async def fetch(request: Request, env: Any) -> Response:
    method = request.path.strip("/")
    if method not in METHODS:
        return Response("not found", status=404)
    value = await getattr(env.COUNTER.get_by_name("bench"), method)()
    return Response(str(value))


worker = pyobjects.Worker(fetch, bindings={"COUNTER": Counter}, vars={"NODE": "?"})
