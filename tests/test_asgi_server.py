"""pyobjects.asgi.App under a real uvicorn, with real HTTP and WebSocket clients.

These tests are synchronous: uvicorn runs its own asyncio event loop in a
thread (uvicorn cannot run under trio), and the clients (httpx, the
``websockets`` sync client, raw sockets) talk to it over 127.0.0.1. The App's
behaviour under trio is covered in process by test_asgi.py and
test_asgi_websocket.py.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from pyobjects import DurableObject, Request, Response, Worker
from pyobjects.asgi import App

from .fake_websocket import FakeClientSocket, upgrade

Serve = Callable[..., str]


class Counter(DurableObject):
    async def fetch(self, request: Request) -> Response:
        value = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", value)
        return Response(str(value))

    async def get(self) -> int:
        return await self.ctx.storage.get("n") or 0


def make_app(sockets: list[FakeClientSocket] | None = None, **options: Any) -> App:
    async def fetch(request: Request, env: Any) -> Response:
        counter = env.COUNTER.get_by_name("c")
        path = request.path
        if path.endswith("/count"):
            response: Response = await counter.fetch(request)
            return response
        if path == "/value":
            return Response(str(await counter.get()))
        if path == "/boom":
            raise RuntimeError("secret")
        if path == "/echo":
            body = await request.bytes()
            return Response(body, headers={"x-url": request.url})
        if path == "/upgrade":
            return Response("no", status=426) if sockets is None else _upgrade(request)
        return Response("not found", status=404)

    def _upgrade(request: Request) -> Response:
        assert sockets is not None
        if request.query == "deny":
            return Response("go away", status=403)
        ws = FakeClientSocket(close_after=2 if request.query == "close" else None)
        sockets.append(ws)
        return upgrade(ws)

    return App(Worker(fetch, bindings={"COUNTER": Counter}), **options)


def _ws_url(url: str, path: str) -> str:
    return url.replace("http://", "ws://") + path


def _raw(url: str, data: bytes, *, read: bool = True) -> bytes:
    """Send raw bytes; return what the server answers before closing."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_http_round_trips_and_errors(serve: Serve) -> None:
    url = serve(make_app())
    with httpx.Client(base_url=url, timeout=5) as client:
        assert [client.get("/count").text for _ in range(3)] == ["1", "2", "3"]
        echoed = client.post("/echo?x=1", content=b"payload")
        assert echoed.content == b"payload"
        assert echoed.headers["x-url"] == f"{url}/echo?x=1"
        boom = client.get("/boom")
        assert boom.status_code == 500
        assert b"secret" not in boom.content
        assert client.get("/value").text == "3"  # still serving


def test_body_limits(serve: Serve) -> None:
    url = serve(make_app(max_body_size=1024))
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.post("/echo", content=b"x" * 1024).status_code == 200
        declared = client.post("/echo", content=b"x" * 4096)
        assert declared.status_code == 413

    def stream() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 256

    with httpx.Client(base_url=url, timeout=5) as client:
        chunked = client.post("/echo", content=stream())
        assert chunked.status_code == 413
        assert b"limited to 1024 bytes" in chunked.content
        assert client.get("/value").status_code == 200


def test_client_disconnects_leave_the_server_serving(serve: Serve) -> None:
    url = serve(make_app())
    host = urlsplit(url).netloc.encode()
    # Half a body, then gone: the worker never runs.
    _raw(
        url,
        b"POST /count HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 100\r\n\r\n"
        b"only part",
        read=False,
    )
    # A whole request, then gone before the answer: it runs, and writes whole.
    _raw(url, b"GET /count HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", read=False)
    with httpx.Client(base_url=url, timeout=5) as client:
        deadline = time.monotonic() + 5
        while client.get("/value").text != "1":
            assert time.monotonic() < deadline, "the complete request never ran"
        assert client.get("/count").text == "2"


def test_websocket_bridge_over_uvicorn(serve: Serve) -> None:
    sockets: list[FakeClientSocket] = []
    url = serve(make_app(sockets))
    with connect(_ws_url(url, "/upgrade"), open_timeout=5) as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
        ws.send(b"\x00bin")
        assert ws.recv(timeout=5) == b"\x00bin"
        ws.close(1000, "bye")
    assert sockets[0].ended.wait(5)
    assert sockets[0].events[-1] == ("close", 1000, "bye")


def test_websocket_object_close_reaches_the_client(serve: Serve) -> None:
    sockets: list[FakeClientSocket] = []
    url = serve(make_app(sockets))
    with connect(_ws_url(url, "/upgrade?close"), open_timeout=5) as ws:
        ws.send("a")
        ws.send("b")
        assert [ws.recv(timeout=5), ws.recv(timeout=5)] == ["a", "b"]
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "object says bye")


def test_websocket_peer_vanishing_is_a_disconnect(serve: Serve) -> None:
    sockets: list[FakeClientSocket] = []
    url = serve(make_app(sockets))
    with connect(_ws_url(url, "/upgrade"), open_timeout=5) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.socket.shutdown(socket.SHUT_RDWR)  # gone, without a close frame
    assert sockets[0].ended.wait(5)
    assert sockets[0].events[-1] == ("disconnect",)


def test_websocket_denial_and_message_limit(serve: Serve) -> None:
    sockets: list[FakeClientSocket] = []
    url = serve(make_app(sockets, max_message_size=1024))
    with (
        pytest.raises(InvalidStatus) as denied,
        connect(_ws_url(url, "/upgrade?deny"), open_timeout=5),
    ):
        pass  # pragma: no cover
    assert denied.value.response.status_code == 403
    assert denied.value.response.body == b"go away"
    with connect(_ws_url(url, "/upgrade"), open_timeout=5) as ws:
        ws.send("x" * 1024)
        assert ws.recv(timeout=5) == "x" * 1024
        ws.send("x" * 1025)
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    assert sockets[-1].ended.wait(5)
    assert sockets[-1].events[-1][:2] == ("close", 1009)


def test_malformed_upgrades_get_clear_answers(serve: Serve) -> None:
    url = serve(make_app([]))
    host = urlsplit(url).netloc.encode()
    # No Sec-WebSocket-Key: the server refuses the handshake itself.
    answer = _raw(
        url,
        b"GET /upgrade HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    # No Connection: Upgrade: it reaches the app as plain HTTP, and the 101
    # the worker answers cannot be honoured.
    answer = _raw(
        url,
        b"GET /upgrade HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/value").status_code == 200


def test_mounted_in_starlette_under_uvicorn(serve: Serve) -> None:
    app = make_app()

    @contextlib.asynccontextmanager
    async def host_lifespan(host: Starlette) -> AsyncIterator[None]:
        async with app.running():
            yield

    host = Starlette(routes=[Mount("/objects", app=app)], lifespan=host_lifespan)
    url = serve(host)
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/objects/count").text == "1"
        assert client.get("/objects/count").text == "2"
