"""Outgoing WebSockets: ``pyobjects.connect_websocket`` against a real server."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    FetchError,
    Request,
    Response,
    Runtime,
    WebSocketClose,
    WebSocketPair,
    Worker,
)
from pyobjects.asgi import App

if TYPE_CHECKING:
    from collections.abc import Callable


class Echo(DurableObject):
    """The server side: echoes text upper-cased, bytes reversed; ``bye`` closes."""

    async def fetch(self, request: Request) -> Response:
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        server.send(request.headers.get("x-greeting") or "hello")
        return Response(status=101, websocket=client)

    async def websocket_message(self, ws: Any, message: str | bytes) -> None:
        if message == "bye":
            ws.close(4000, "asked to")
        elif isinstance(message, str):
            ws.send(message.upper())
        else:
            ws.send(message[::-1])


async def route(request: Request, env: Any) -> Response:
    response: Response = await env.ECHO.get_by_name("e").fetch(request)
    return response


@pytest.fixture
def ws_url(serve: Callable[..., str]) -> str:
    base = serve(App(Worker(route, bindings={"ECHO": Echo})))
    return base.replace("http://", "ws://") + "/ws"


async def test_messages_both_ways_and_a_clean_close(ws_url: str) -> None:
    async with pyobjects.connect_websocket(ws_url) as ws:
        assert await ws.receive() == "hello"
        ws.send("shout")
        assert await ws.receive() == "SHOUT"
        ws.send(b"\x01\x02")
        assert await ws.receive() == b"\x02\x01"
        ws.send("x" * 100_000)  # more than one read from the socket
        assert await ws.receive() == "X" * 100_000
    assert ws.ready_state == ws.CLOSED


async def test_the_server_closing_ends_async_for(ws_url: str) -> None:
    seen: list[str | bytes] = []
    async with pyobjects.connect_websocket(ws_url) as ws:
        ws.send("bye")
        seen.extend([message async for message in ws])
        closed = await ws.receive()
    assert seen == ["hello"]
    assert closed == WebSocketClose(code=4000, reason="asked to", was_clean=True)


async def test_a_refused_connection_is_a_fetch_error(ws_url: str) -> None:
    with anyio.fail_after(10), pytest.raises(FetchError, match="failed"):
        async with pyobjects.connect_websocket("ws://127.0.0.1:1/"):
            pass  # pragma: no cover - never connected
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL"):
        async with pyobjects.connect_websocket("http://example.test/"):
            pass  # pragma: no cover


async def test_a_refused_handshake_is_a_fetch_error(serve: Callable[..., str]) -> None:
    async def deny(request: Request, env: Any) -> Response:
        return Response("no", 403)

    base = serve(App(Worker(deny, bindings={})))
    with pytest.raises(FetchError, match="403"):
        async with pyobjects.connect_websocket(base.replace("http", "ws")):
            pass  # pragma: no cover


class Consumer(DurableObject):
    """A stream consumer: a wait_until task reads the feed, storing each message."""

    async def start(self, url: str) -> None:
        self.ctx.wait_until(self.consume(url))

    async def consume(self, url: str) -> None:
        async with pyobjects.connect_websocket(url) as ws:
            async for message in ws:
                assert isinstance(message, str)
                await self.ctx.storage.put("last", message)
                if message == "hello":
                    ws.send("more")  # after the write is durable
                if message == "MORE":
                    break

    async def last(self) -> Any:
        return await self.ctx.storage.get("last")


async def test_an_object_consumes_a_stream_in_the_background(ws_url: str) -> None:
    async with Runtime(bindings={"C": Consumer}) as rt:
        stub = rt.env.C.get_by_name("feed")
        await stub.start(ws_url)
        with anyio.fail_after(10):
            while await stub.last() != "MORE":  # noqa: ASYNC110
                await anyio.sleep(0.01)  # a real server on another thread: poll


async def test_headers_go_with_the_handshake(ws_url: str) -> None:
    async with pyobjects.connect_websocket(ws_url, headers={"X-Greeting": "hi"}) as ws:
        assert await ws.receive() == "hi"
        ws.close(1000, "done")
        assert await ws.receive() == WebSocketClose(
            code=1000, reason="done", was_clean=True
        )


async def test_without_websockets_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "websockets.client", None)
    with pytest.raises(ModuleNotFoundError, match=r"pyobjects\[server\]"):
        async with pyobjects.connect_websocket("ws://example.test/"):
            pass  # pragma: no cover
