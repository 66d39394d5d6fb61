"""The WebSocket side of pyobjects.asgi.App, driven in process (asyncio and trio).

The worker answers with ``Response(status=101, websocket=FakeClientSocket())``,
a stand-in implementing the bridge contract of the WebSocket core.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from pyobjects import Request, Response, Worker
from pyobjects.asgi import App

from .asgi_driver import lifespan, websocket
from .fake_websocket import FakeClientSocket, upgrade


def make_app(sockets: list[FakeClientSocket], **options: Any) -> App:
    async def fetch(request: Request, env: Any) -> Response:
        if request.path == "/deny":
            return Response("go away", status=403, headers={"x-why": "test"})
        if request.path == "/boom":
            raise RuntimeError("secret")
        if request.path == "/not-a-socket":
            return upgrade(object())
        assert request.method == "GET"
        assert request.headers["upgrade"] == "websocket"
        assert request.url.startswith("http://example.test/")
        socket = FakeClientSocket(
            close_after=2 if request.path == "/close-after-2" else None,
            greeting="hello" if request.path == "/greet" else "",
        )
        sockets.append(socket)
        headers = {"sec-websocket-protocol": "chat", "x-extra": "1"}
        return upgrade(socket, headers)

    return App(Worker(fetch, bindings={}), **options)


async def test_messages_flow_both_ways_and_a_peer_close_reaches_the_object() -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets)
    async with lifespan(app):
        async with websocket(app, "/greet") as peer:
            accept = await peer.next()
            assert accept["type"] == "websocket.accept"
            assert accept["subprotocol"] == "chat"
            assert accept["headers"] == [(b"x-extra", b"1")]
            assert await peer.next() == {"type": "websocket.send", "text": "hello"}
            await peer.send_text("ping")
            assert await peer.next() == {"type": "websocket.send", "text": "ping"}
            await peer.send_bytes(b"\x00\x01")
            assert await peer.next() == {"type": "websocket.send", "bytes": b"\x00\x01"}
            await peer.disconnect(1000, "bye")
    (socket,) = sockets
    assert socket.events == [
        ("accept",),
        ("message", "ping"),
        ("message", b"\x00\x01"),
        ("close", 1000, "bye"),
    ]


async def test_a_vanished_peer_is_a_disconnect() -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets)
    async with lifespan(app):
        async with websocket(app) as peer:
            assert (await peer.next())["type"] == "websocket.accept"
            await peer.disconnect(1006)
    assert sockets[0].events == [("accept",), ("disconnect",)]


async def test_the_object_closing_closes_the_peer() -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets)
    async with lifespan(app):
        async with websocket(app, "/close-after-2") as peer:
            await peer.next()  # accept
            await peer.send_text("a")
            await peer.send_text("b")
            assert await peer.next() == {"type": "websocket.send", "text": "a"}
            assert await peer.next() == {"type": "websocket.send", "text": "b"}
            assert await peer.next() == {
                "type": "websocket.close",
                "code": 4000,
                "reason": "object says bye",
            }
    # The object closed first: it is not told about the peer's close too.
    assert sockets[0].events[-1] == ("object-closed", 4000)
    assert not any(e[0] in ("close", "disconnect") for e in sockets[0].events)


@pytest.mark.parametrize(
    ("code", "sent"), [(1005, 1000), (1006, 1011), (999, 1011), (3000, 3000)]
)
async def test_close_codes_that_cannot_go_on_the_wire_are_mapped(
    code: int, sent: int
) -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets)
    async with lifespan(app):
        async with websocket(app) as peer:
            await peer.next()
            sockets[0].close_from_object(code, "x" * 200)
            close = await peer.next()
    assert close["code"] == sent
    assert close["reason"] == "x" * 123  # what fits in a close frame


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets, max_message_size=8)
    async with lifespan(app):
        async with websocket(app) as peer:
            await peer.next()
            await peer.send_text("é" * 4)  # 8 bytes: fits
            assert await peer.next() == {"type": "websocket.send", "text": "é" * 4}
            await peer.send_text("é" * 5)  # 5 characters, 10 bytes
            close = await peer.next()
    assert close["type"] == "websocket.close"
    assert close["code"] == 1009
    assert sockets[0].events[-1] == ("close", 1009, "message larger than 8 bytes")


async def test_a_bytes_message_over_the_limit_closes_with_1009() -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets, max_message_size=8)
    async with lifespan(app):
        async with websocket(app) as peer:
            await peer.next()
            await peer.send_bytes(b"x" * 9)
            assert (await peer.next())["code"] == 1009


async def test_a_refusal_goes_back_as_an_http_response() -> None:
    app = make_app([])
    async with lifespan(app):
        async with websocket(app, "/deny") as peer:
            start = await peer.next()
            body = await peer.next()
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 403
    assert (b"x-why", b"test") in start["headers"]
    assert body == {"type": "websocket.http.response.body", "body": b"go away"}


async def test_a_refusal_without_the_extension_is_a_1008_close() -> None:
    app = make_app([])
    async with lifespan(app):
        async with websocket(app, "/deny", denial_extension=False) as peer:
            assert await peer.next() == {"type": "websocket.close", "code": 1008}


async def test_worker_errors_refuse_the_upgrade_with_a_generic_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app([])
    async with lifespan(app):
        with caplog.at_level(logging.ERROR, logger="pyobjects.asgi"):
            async with websocket(app, "/boom") as peer:
                start = await peer.next()
                body = await peer.next()
            async with websocket(app, "/not-a-socket") as peer:
                wrong = await peer.next()
                await peer.next()
    assert start["status"] == 500
    assert body["body"] == b"Internal Server Error\n"
    assert "secret" in caplog.text
    assert wrong["status"] == 500
    assert "lacks accept, send, close, _disconnect, receive" in caplog.text


async def test_upgrades_before_startup_are_refused_with_503() -> None:
    app = make_app([])
    async with websocket(app) as peer:
        assert (await peer.next())["status"] == 503


async def test_a_peer_gone_before_connect_is_ignored() -> None:
    app = make_app([])
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message: Any) -> None:
        sent.append(message)  # pragma: no cover

    async with lifespan(app):
        await app({"type": "websocket", "headers": []}, receive, send)
    assert sent == []


async def test_a_send_failure_disconnects_the_object() -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets)
    messages = [{"type": "websocket.connect"}]
    accepted = False

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        raise AssertionError  # pragma: no cover

    async def send(message: Any) -> None:
        nonlocal accepted
        if message["type"] == "websocket.accept":
            accepted = True
        raise OSError("transport gone")

    scope = {
        "type": "websocket",
        "scheme": "ws",
        "path": "/",
        "headers": [(b"host", b"example.test"), (b"upgrade", b"websocket")],
    }
    async with lifespan(app):
        await app(scope, receive, send)
    assert accepted
    assert sockets[0].events == [("accept",), ("disconnect",)]


class BrokenSocket(FakeClientSocket):
    async def receive(self) -> Any:
        raise RuntimeError("object side broke")

    async def send(self, message: str | bytes) -> None:
        raise RuntimeError("refused")


async def test_a_failing_object_socket_closes_the_peer_with_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = BrokenSocket()

    async def fetch(request: Request, env: Any) -> Response:
        return upgrade(broken)

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        async with websocket(app) as peer:
            assert (await peer.next())["type"] == "websocket.accept"
            assert (await peer.next())["code"] == 1011
    assert broken.events == [("accept",), ("disconnect",)]
    assert "object side broke" in caplog.text


async def test_a_cancelled_connection_disconnects_the_object() -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets)
    async with lifespan(app):
        with anyio.CancelScope() as scope:
            async with websocket(app) as peer:
                await peer.next()
                await peer.send_text("x")
                await peer.next()
                scope.cancel()  # as a server does when it stops
    assert sockets[0].events[-1] == ("disconnect",)


@pytest.mark.parametrize(
    ("message", "event"),
    [
        ({"code": 1005, "reason": ""}, ("close", 1005, "")),  # a close frame, no code
        ({"code": 1005}, ("disconnect",)),  # uvicorn: connection lost
        ({}, ("disconnect",)),
        ({"code": 1001, "reason": "going away"}, ("close", 1001, "going away")),
    ],
)
async def test_disconnect_messages_are_told_apart(
    message: dict[str, Any], event: tuple[object, ...]
) -> None:
    sockets: list[FakeClientSocket] = []
    app = make_app(sockets)
    async with lifespan(app):
        async with websocket(app) as peer:
            await peer.next()
            await peer.to_app.send({"type": "websocket.disconnect", **message})
    assert sockets[0].events[-1] == event


class RefusingSocket(FakeClientSocket):
    async def send(self, message: str | bytes) -> None:
        self.events.append(("refused", message))
        raise RuntimeError("socket closed")

    def close(self, code: int, reason: str) -> None:
        super().close(code, reason)
        raise RuntimeError("already closed")


async def test_errors_of_the_object_socket_do_not_break_the_bridge() -> None:
    refusing = RefusingSocket()

    async def fetch(request: Request, env: Any) -> Response:
        return upgrade(refusing)

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        async with websocket(app) as peer:
            await peer.next()
            await peer.send_text("dropped")
            await peer.disconnect(1000, "done")
    assert refusing.events == [
        ("accept",),
        ("refused", "dropped"),
        ("close", 1000, "done"),
    ]


async def test_bad_handshakes_and_refusals() -> None:
    async def fetch(request: Request, env: Any) -> Response:
        return Response("no", status=403, headers={"x-bad": "ŝ"})

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        async with websocket(app, headers=[("host", "bad host")]) as peer:
            assert (await peer.next())["status"] == 400
        async with websocket(app) as peer:
            assert (await peer.next())["status"] == 500  # header not Latin-1
