"""pyobjects.asgi.App under a real server running on trio (hypercorn).

uvicorn runs on asyncio only; hypercorn can serve on trio, which proves the
App, the runtime it starts and the WebSocket bridge are backend-neutral
behind a real server too. Synchronous tests: the server has its own thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pyobjects.storage import SQLiteBackend

from .test_asgi_server import make_app

if TYPE_CHECKING:
    from pathlib import Path

    from .fake_websocket import FakeClientSocket

Serve = Callable[[Any], str]


def test_http_on_trio(serve_on_trio: Serve, tmp_path: Path) -> None:
    url = serve_on_trio(make_app(storage=SQLiteBackend(tmp_path), max_body_size=64))
    with httpx.Client(base_url=url, timeout=5) as client:
        assert [client.get("/count").text for _ in range(2)] == ["1", "2"]
        assert client.post("/echo", content=b"x" * 65).status_code == 413
        boom = client.get("/boom")
        assert (boom.status_code, boom.text) == (500, "Internal Server Error\n")


def test_shutdown_on_trio_flushes_writes(tmp_path: Path) -> None:
    from .servers import HypercornTrioThread

    server = HypercornTrioThread(make_app(storage=SQLiteBackend(tmp_path)))
    url = server.start()
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/count").text == "1"
    finally:
        server.stop()

    async def stored() -> list[str]:
        backend = SQLiteBackend(tmp_path)
        try:
            return await backend.list_object_ids("COUNTER")
        finally:
            await backend.aclose()

    assert len(anyio.run(stored)) == 1


def test_websockets_on_trio(serve_on_trio: Serve) -> None:
    sockets: list[FakeClientSocket] = []
    url = serve_on_trio(make_app(sockets)).replace("http://", "ws://")
    with connect(url + "/upgrade", open_timeout=5) as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
        ws.close(1000, "bye")
    assert sockets[0].ended.wait(5)
    # hypercorn 0.17/0.18 reports every client close as 1006, dropping the
    # client's code, so the object sees a disconnect there.
    assert sockets[0].events[-1] in {("close", 1000, "bye"), ("disconnect",)}
    with (
        pytest.raises(InvalidStatus) as denied,
        connect(url + "/upgrade?deny", open_timeout=5),
    ):
        pass  # pragma: no cover
    assert denied.value.response.status_code == 403
