"""WebSockets end to end: a real client, uvicorn, the bridge, a hibernating object.

Nothing here is faked: the worker answers the handshake with the client end
of a real ``WebSocketPair`` whose server end an object accepted with
``ctx.accept_websocket()``, uvicorn serves the App on 127.0.0.1 (a free port)
in a thread, and the ``websockets`` sync client (or a raw socket) talks to
it. The runtime runs on a ManualClock on uvicorn's loop, so idle eviction
happens exactly when a test advances the clock.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import queue
import socket
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.from_thread
import anyio.lowlevel
import httpx
import pytest
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    InvalidStatus,
)
from websockets.sync.client import ClientConnection, connect

from pyobjects import (
    DurableObject,
    DurableObjectState,
    Request,
    Response,
    WebSocket,
    WebSocketPair,
    WebSocketRequestResponsePair,
    Worker,
)
from pyobjects.asgi import App
from pyobjects.storage import MemoryBackend
from pyobjects.testing import ManualClock

from .helpers import ControlledBackend

Serve = Callable[..., str]
DISCONNECTED = "WebSocket disconnected without sending Close frame."
TIMEOUT = 5.0


@dataclass
class Log:
    """What the objects of one test did, read from the test thread."""

    built: int = 0
    instances: list[weakref.ref[Room]] = field(default_factory=list)
    sockets: dict[str, WebSocket] = field(default_factory=dict)
    events: queue.Queue[tuple[Any, ...]] = field(default_factory=queue.Queue)

    def next_event(self) -> tuple[Any, ...]:
        return self.events.get(timeout=TIMEOUT)


class Room(DurableObject):
    """A chat room of hibernatable sockets; text messages are commands."""

    log: ClassVar[Log]

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        log = type(self).log
        log.built += 1
        self.number = log.built
        log.instances.append(weakref.ref(self))
        ctx.set_websocket_auto_response(WebSocketRequestResponsePair("ping", "pong"))

    async def fetch(self, request: Request) -> Response:
        params = parse_qs(urlsplit(request.url).query)
        if "refuse" in params:
            return Response("room full", status=409)
        user = params.get("user", ["?"])[0]
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server, params.get("tag", []))
        server.serialize_attachment({"user": user})
        type(self).log.sockets[user] = server
        if "server-end" in params:  # the mistake: return the end just accepted
            return Response(status=101, websocket=server)
        return Response(status=101, websocket=client)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        if isinstance(message, bytes):
            ws.send(message)
            return
        command, _, arg = message.partition(" ")
        if command == "echo":
            ws.send(arg)
        elif command == "who":
            stamp = self.ctx.get_websocket_auto_response_timestamp(ws)
            ws.send(
                json.dumps(
                    {
                        "instance": self.number,
                        "built": type(self).log.built,
                        "tags": self.ctx.get_tags(ws),
                        "attachment": ws.deserialize_attachment(),
                        "auto_response_seen": stamp is not None,
                    }
                )
            )
        elif command == "tell":
            tag, _, text = arg.partition(" ")
            for peer in self.ctx.get_websockets(tag):
                peer.send(text)
        elif command == "all":
            for peer in self.ctx.get_websockets():
                peer.send(arg)
        elif command == "close":
            code, _, reason = arg.partition(" ")
            ws.close(int(code), reason)
        elif command == "write":
            self.ctx.storage.put("last", arg)
            ws.send(f"written {arg}")

    async def websocket_close(
        self, ws: WebSocket, code: int, reason: str, was_clean: bool
    ) -> None:
        user = ws.deserialize_attachment()["user"]
        type(self).log.events.put(("close", user, code, reason, was_clean))

    async def websocket_error(self, ws: WebSocket, error: BaseException) -> None:
        user = ws.deserialize_attachment()["user"]
        type(self).log.events.put(("error", user, repr(error)))


class Served:
    """The App on a ManualClock, reachable on uvicorn's loop from the test."""

    def __init__(self, **options: Any) -> None:
        self.log = Log()
        self.cached: Response | None = None
        room = type("Room", (Room,), {"log": self.log})

        async def fetch(request: Request, env: Any) -> Response:
            if request.path == "/deny":
                return Response("go away", status=403)
            if request.path.startswith("/room/"):
                stub = env.ROOM.get_by_name(request.path.removeprefix("/room/"))
                response: Response = await stub.fetch(request)
                return response
            if request.path == "/twice":  # the same client end, every time
                if self.cached is None:
                    self.cached = Response(status=101, websocket=WebSocketPair()[0])
                return self.cached
            return Response("ok")

        self.clock = ManualClock()
        self.app = App(
            Worker(fetch, bindings={"ROOM": room}), clock=self.clock, **options
        )
        self._token: anyio.lowlevel.EventLoopToken | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # uvicorn's loop, where the runtime runs
            self._token = anyio.lowlevel.current_token()
        await self.app(scope, receive, send)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``await fn(*args)`` on the server's loop."""
        assert self._token is not None
        return anyio.from_thread.run(fn, *args, token=self._token)

    def advance(self, ms: int) -> None:
        self.call(self.clock.advance, ms)


def start(serve: Serve, **options: Any) -> tuple[Served, str]:
    served = Served(**options)
    url = serve(served)
    return served, url.replace("http://", "ws://")


# How join() connects: with permessage-deflate (what browsers ask for; the
# bridge uses ASGI sends) or without (uvicorn's transport is written directly,
# see _ws_direct). Every test here runs both ways.
CLIENT: dict[str, Any] = {"compression": "deflate"}


@pytest.fixture(autouse=True, params=["deflate", None], ids=["asgi", "direct"])
def compression(request: pytest.FixtureRequest) -> Any:
    CLIENT["compression"] = request.param
    yield request.param
    CLIENT["compression"] = "deflate"


def join(url: str, room: str = "r", user: str = "ann", *tags: str) -> ClientConnection:
    query = f"user={user}" + "".join(f"&tag={tag}" for tag in tags)
    return connect(
        f"{url}/room/{room}?{query}",
        open_timeout=TIMEOUT,
        compression=CLIENT["compression"],
    )


def recv(ws: ClientConnection) -> str | bytes:
    return ws.recv(timeout=TIMEOUT)


def who(ws: ClientConnection) -> dict[str, Any]:
    ws.send("who")
    answer = recv(ws)
    assert isinstance(answer, str)
    result: dict[str, Any] = json.loads(answer)
    return result


def poll(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for *condition*, set by the server thread."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def raw_upgrade(url: str, path: str, *extra: bytes) -> socket.socket:
    """A WebSocket handshake over a plain socket; returns it once upgraded."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\nHost: "
        + parts.netloc.encode()
        + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n"
        + b"".join(extra)
        + b"\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def raw_answer(url: str, request: bytes) -> bytes:
    """Send a raw HTTP request; return the head of the answer."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection(
        (parts.hostname, parts.port), timeout=TIMEOUT
    ) as sock:
        sock.sendall(request.replace(b"HOST", parts.netloc.encode()))
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        return answer


# -- messages ------------------------------------------------------------------


def test_echo_tags_attachments_and_broadcast(serve: Serve) -> None:
    served, url = start(serve)
    with (
        join(url, "r", "ann", "a") as ann,
        join(url, "r", "bob", "a", "b") as bob,
        join(url, "r", "cat", "b") as cat,
    ):
        ann.send("echo hello")
        assert recv(ann) == "hello"
        ann.send(b"\x00\xffbinary")
        assert recv(ann) == b"\x00\xffbinary"
        assert who(bob) == {
            "instance": 1,
            "built": 1,
            "tags": ["a", "b"],
            "attachment": {"user": "bob"},
            "auto_response_seen": False,
        }
        ann.send("tell a to a")
        assert recv(ann) == "to a"
        assert recv(bob) == "to a"
        cat.send("echo first")  # cat is not tagged "a": nothing came before
        assert recv(cat) == "first"
        cat.send("all everyone")
        assert [recv(ann), recv(bob), recv(cat)] == ["everyone"] * 3
    assert served.log.built == 1


def test_clean_closes_both_ways(serve: Serve) -> None:
    served, url = start(serve)
    log = served.log
    with join(url, user="ann") as ann:
        ann.close(4001, "client leaves")
    # The object got the close frame; its answer (same code) reached the client.
    assert log.next_event() == ("close", "ann", 4001, "client leaves", True)
    assert (ann.close_code, ann.close_reason) == (4001, "client leaves")

    with join(url, user="bob") as bob:
        bob.send("close 4002 room closed")
        with pytest.raises(ConnectionClosed) as closed:
            recv(bob)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "room closed")
    assert log.next_event() == ("close", "bob", 4002, "room closed", True)

    with join(url, user="cat") as cat:
        cat.close()  # a close frame with code 1000 and no reason
    assert log.next_event() == ("close", "cat", 1000, "", True)


def test_a_client_that_vanishes_is_a_1006_close(serve: Serve) -> None:
    served, url = start(serve)
    log = served.log
    # A TCP reset: SO_LINGER 0, then close.
    sock = raw_upgrade(url, "/room/r?user=reset")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert log.next_event() == ("close", "reset", 1006, DISCONNECTED, False)
    # An orderly TCP close (FIN) without a close frame.
    sock = raw_upgrade(url, "/room/r?user=fin")
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    assert log.next_event() == ("close", "fin", 1006, DISCONNECTED, False)
    # A close frame without a status code is a clean close with 1005.
    sock = raw_upgrade(url, "/room/r?user=nocode")
    sock.sendall(b"\x88\x80" + os.urandom(4))  # FIN + close, masked, empty
    assert log.next_event() == ("close", "nocode", 1005, "", True)
    sock.close()
    # The object and the server carry on.
    with join(url, user="ann") as ann:
        assert who(ann)["instance"] == 1


def test_an_oversized_message_closes_with_1009(serve: Serve) -> None:
    served, url = start(serve, max_message_size=1024)
    with join(url, user="big") as big, join(url, user="small") as small:
        big.send("echo " + "x" * 1019)  # exactly 1024 bytes
        assert recv(big) == "x" * 1019
        big.send("echo " + "x" * 1020)
        with pytest.raises(ConnectionClosedError) as closed:
            recv(big)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        event = served.log.next_event()
        assert event[:3] == ("close", "big", 1009)
        assert event[4] is True
        small.send("echo still here")  # the other connection is untouched
        assert recv(small) == "still here"
    with join(url, user="new") as new:  # and new ones are served
        assert who(new)["attachment"] == {"user": "new"}


# -- handshakes ----------------------------------------------------------------


def test_a_response_other_than_101_refuses_the_upgrade(serve: Serve) -> None:
    served, url = start(serve)
    with pytest.raises(InvalidStatus) as refused, connect(f"{url}/room/r?refuse=1"):
        pass  # pragma: no cover
    assert refused.value.response.status_code == 409
    assert refused.value.response.body == b"room full"
    with pytest.raises(InvalidStatus) as denied, connect(f"{url}/deny"):
        pass  # pragma: no cover
    assert denied.value.response.status_code == 403
    assert served.log.sockets == {}


def test_returning_the_server_end_is_a_clear_error(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    _served, url = start(serve)
    with pytest.raises(InvalidStatus) as failed, connect(f"{url}/room/r?server-end=1"):
        pass  # pragma: no cover
    assert failed.value.response.status_code == 500
    assert failed.value.response.body == b"Internal Server Error\n"
    assert "return the client end" in caplog.text
    with join(url, user="ok") as ok:  # the server keeps serving
        assert who(ok)["attachment"] == {"user": "ok"}


def test_a_client_end_is_bridged_once(serve: Serve) -> None:
    _served, url = start(serve)
    with connect(f"{url}/twice", open_timeout=TIMEOUT):
        with pytest.raises(InvalidStatus) as again, connect(f"{url}/twice"):
            pass  # pragma: no cover
        assert again.value.response.status_code == 500


def test_malformed_upgrade_requests_get_clear_answers(serve: Serve) -> None:
    _served, url = start(serve)
    http_url = url.replace("ws://", "http://")
    # No Sec-WebSocket-Key: the server refuses the handshake itself.
    answer = raw_answer(
        http_url,
        b"GET /room/r HTTP/1.1\r\nHost: HOST\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    # An unsupported protocol version.
    answer = raw_answer(
        http_url,
        b"GET /room/r HTTP/1.1\r\nHost: HOST\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 8\r\n\r\n",
    )
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 426")), answer
    # Upgrade without Connection: Upgrade reaches the worker as plain HTTP;
    # the 101 it answers cannot be honoured, and the client is told why.
    with httpx.Client(base_url=http_url, timeout=TIMEOUT) as client:
        response = client.get("/room/r?user=x", headers={"upgrade": "websocket"})
        assert response.status_code == 400
        assert "malformed WebSocket upgrade request" in response.text
        assert client.get("/").text == "ok"  # still serving


# -- hibernation ---------------------------------------------------------------


def test_a_connected_client_survives_the_object_being_evicted(serve: Serve) -> None:
    served, url = start(serve)
    log = served.log
    with join(url, "r", "ann", "red", "admin") as ann, join(url, "r", "bob") as bob:
        first = who(ann)
        assert first == {
            "instance": 1,
            "built": 1,
            "tags": ["red", "admin"],
            "attachment": {"user": "ann"},
            "auto_response_seen": False,
        }
        # Idle for the runtime's idle time (10 s of the ManualClock): evicted,
        # while both connections stay open.
        served.advance(10_000)
        gc.collect()
        assert log.instances[0]() is None, "the first instance is still alive"
        assert log.built == 1

        # The auto-response is answered without building the object.
        ann.send("ping")
        assert recv(ann) == "pong"
        assert log.built == 1

        # The next message builds a new instance, which finds the same socket
        # with its tags and attachment, and its reply reaches the same client.
        second = who(ann)
        assert second == {
            "instance": 2,
            "built": 2,
            "tags": ["red", "admin"],
            "attachment": {"user": "ann"},
            "auto_response_seen": True,
        }
        assert len(log.instances) == 2
        ann.send("tell red hi, red")
        assert recv(ann) == "hi, red"
        ann.send("all hello from instance 2")
        assert recv(ann) == recv(bob) == "hello from instance 2"
        # And again: evicted, rebuilt by bob's message.
        served.advance(10_000)
        assert who(bob)["instance"] == 3
    closes = {log.next_event()[:3], log.next_event()[:3]}
    assert closes == {("close", "ann", 1000), ("close", "bob", 1000)}


def test_a_send_after_a_write_waits_until_the_write_is_durable(serve: Serve) -> None:
    backend = ControlledBackend(MemoryBackend())
    served, url = start(serve, storage=backend)

    async def hold() -> None:
        backend.hold = anyio.Event()

    async def release() -> None:
        assert backend.hold is not None
        backend.hold.set()
        backend.hold = None

    async def held_at_gate(user: str) -> int:
        return len(served.log.sockets[user]._outbox or ())

    with join(url, user="ann") as ann:
        assert who(ann)["instance"] == 1
        served.call(hold)
        ann.send("write v1")
        poll(lambda: len(backend.commits) == 1, "the commit")
        # The reply is held at the object's output gate, not on the wire:
        # a ping answered by the client's server comes back, and nothing else.
        assert served.call(held_at_gate, "ann") == 1
        assert ann.ping().wait(TIMEOUT)
        with pytest.raises(TimeoutError):
            ann.recv(timeout=0)
        served.call(release)
        assert recv(ann) == "written v1"
        assert served.call(held_at_gate, "ann") == 0
    assert list(dict(backend.commits[0].writes)) == ["last"]


# -- Response(websocket=...) ---------------------------------------------------


def test_response_accepts_only_a_fresh_websocket_end() -> None:
    with pytest.raises(TypeError, match="WebSocketPair"):
        Response(status=101, websocket=object())
    client, server = WebSocketPair()
    server.accept()
    with pytest.raises(TypeError, match="return the client end"):
        Response(status=101, websocket=server)
    assert Response(status=101, websocket=client).websocket is client
