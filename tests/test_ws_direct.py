"""Server frames written straight to uvicorn's transport, encoded once (#16).

The direct path (``_ws_direct``) must give the peer exactly what the ASGI
path gives: the same frames, in the same order, after the output gate; the
fallbacks (permessage-deflate, wsproto, a paused transport) must keep
working. tests/test_websocket_server.py runs its end-to-end tests both ways.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - uvicorn's own types
import gc
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from pyobjects import Request, Response, WebSocketPair
from pyobjects._ws_direct import FrameCache, direct_writer, encode_frame

from .test_websocket_server import CLIENT, Serve, Served, join, recv, start

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
@pytest.mark.parametrize("text", [True, False])
def test_encode_frame_matches_the_websockets_library(size: int, text: bool) -> None:
    payload = bytes(i % 90 + 32 for i in range(size))
    message: str | bytes = payload.decode() if text else payload
    opcode = Opcode.TEXT if text else Opcode.BINARY
    expected = Frame(opcode, payload).serialize(mask=False, extensions=[])
    assert encode_frame(message) == expected


def test_encode_frame_encodes_text_as_utf8() -> None:
    expected = Frame(Opcode.TEXT, "é€😀".encode()).serialize(mask=False, extensions=[])
    assert encode_frame("é€😀") == expected


def test_the_frame_cache_encodes_one_message_once() -> None:
    cache = FrameCache()
    text = "b 1 " + "x" * 10  # built at run time: a new object
    first = cache.frame(text)
    assert cache.frame(text) is first  # not encoded again
    assert cache.frame(b"other") == encode_frame(b"other")
    big = b"y" * 100_000
    assert cache.frame(big) == encode_frame(big)
    assert cache.frame(big) is not cache.frame(big)  # too big to keep


# -- the socket end's sink --------------------------------------------------------


async def test_a_sink_writes_only_while_the_reader_waits_and_nothing_is_queued() -> (
    None
):
    client, server = WebSocketPair()
    client.accept()
    server.accept()
    written: list[str | bytes] = []
    paused = False

    def sink(message: str | bytes) -> bool:
        if paused:
            return False
        written.append(message)
        return True

    client._sink = sink
    server.send("queued")  # no reader waiting yet: into the inbox
    assert written == []
    received: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def read(count: int) -> None:
            for _ in range(count):
                item = await client.receive()
                received.append(item)

        tg.start_soon(read, 4)
        await anyio.wait_all_tasks_blocked()
        assert received == ["queued"]
        server.send("direct")  # the reader waits, nothing queued: written
        assert written == ["direct"]
        paused = True
        server.send("held 1")  # the transport is paused: queued
        paused = False
        server.send("held 2")  # something is queued: must not overtake it
        assert written == ["direct"]
        await anyio.wait_all_tasks_blocked()
        assert received == ["queued", "held 1", "held 2"]
        server.close(1000, "bye")  # a close always goes through the reader
        await anyio.wait_all_tasks_blocked()
    assert written == ["direct"]
    assert received[-1].code == 1000


# -- under uvicorn -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def _reset_client() -> Iterator[None]:
    yield
    CLIENT["compression"] = "deflate"


@pytest.fixture
def asgi_sends(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ``websocket.send`` that reached uvicorn's ASGI send."""
    sent: list[Any] = []
    original = WebSocketsSansIOProtocol.send

    async def send(self: WebSocketsSansIOProtocol, message: Any) -> None:
        if message["type"] == "websocket.send":
            sent.append(message.get("text", message.get("bytes")))
        await original(self, message)

    monkeypatch.setattr(WebSocketsSansIOProtocol, "send", send)
    return sent


@pytest.mark.parametrize("compression", ["deflate", None], ids=["asgi", "direct"])
def test_a_broadcast_skips_the_asgi_send_unless_deflate_is_on(
    serve: Serve, asgi_sends: list[Any], compression: str | None
) -> None:
    _, url = start(serve)
    CLIENT["compression"] = compression
    with join(url, user="ann") as ann, join(url, user="bob") as bob:
        for n in range(3):
            ann.send(f"all m{n}")
        ann.send(b"\x00\xff")
        for ws in (ann, bob):
            assert [recv(ws) for _ in range(3)] == ["m0", "m1", "m2"]
        assert recv(ann) == b"\x00\xff"
    if compression is None:
        assert asgi_sends == []  # every frame went straight to the transport
    else:
        assert asgi_sends == ["m0", "m0", "m1", "m1", "m2", "m2", b"\x00\xff"]


def test_wsproto_falls_back_to_asgi_sends(serve: Serve) -> None:
    served = Served()
    url = serve(served, ws="wsproto").replace("http://", "ws://")
    CLIENT["compression"] = None
    with join(url, user="ann") as ann, join(url, user="bob") as bob:
        ann.send("all hello")
        assert recv(ann) == recv(bob) == "hello"
    assert served.log.next_event()[:3] in {
        ("close", "ann", 1000),
        ("close", "bob", 1000),
    }


def test_an_open_connection_keeps_none_of_its_handshake_alive(serve: Serve) -> None:
    # Every object alive is one more for each full garbage collection to walk.
    _, url = start(serve)

    def alive(kind: type) -> int:
        gc.collect()
        return sum(type(o) is kind for o in gc.get_objects())

    with join(url, user="ann") as ann, join(url, user="bob") as bob:
        ann.send("all hi")
        assert recv(ann) == recv(bob) == "hi"
        assert alive(Request) == 0
        assert alive(Response) == 0


# -- the uvicorn hook and its guards -------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.fail = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("the transport broke")
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


def uvicorn_connection() -> tuple[WebSocketsSansIOProtocol, FakeTransport]:
    """The attributes of an accepted uvicorn connection, without a server."""
    protocol = object.__new__(WebSocketsSansIOProtocol)
    transport = FakeTransport()
    protocol.conn = ServerProtocol(state=State.OPEN)
    protocol.transport = transport  # type: ignore[assignment]
    protocol.writable = asyncio.Event()
    protocol.writable.set()
    protocol.close_sent = False
    protocol.disconnected = False
    return protocol, transport


def test_the_hook_writes_one_encoded_frame_per_message() -> None:
    protocol, transport = uvicorn_connection()
    write = direct_writer(protocol.send, FrameCache())
    assert write is not None
    assert write("hi") is True
    assert write(b"\x01") is True
    assert transport.written == [encode_frame("hi"), encode_frame(b"\x01")]


@pytest.mark.parametrize(
    "change",
    [
        "paused",
        "close_sent",
        "disconnected",
        "closing",
        "conn_closing",
        "fragment",
        "write_fails",
    ],
)
def test_the_hook_declines_what_the_asgi_send_must_handle(change: str) -> None:
    protocol, transport = uvicorn_connection()
    write = direct_writer(protocol.send, FrameCache())
    assert write is not None
    if change == "paused":
        protocol.writable.clear()
    elif change == "close_sent":
        protocol.close_sent = True
    elif change == "disconnected":
        protocol.disconnected = True
    elif change == "closing":
        transport.closing = True
    elif change == "conn_closing":
        protocol.conn.send_close(1000)
    elif change == "fragment":
        protocol.conn.send_text(b"part", fin=False)
    else:
        transport.fail = True
    assert write("hi") is False
    assert encode_frame("hi") not in transport.written


def test_the_hook_is_only_for_uvicorn_sansio_without_extensions() -> None:
    cache = FrameCache()

    async def plain_send(message: Any) -> None:
        """Any other server's ASGI send."""

    assert direct_writer(plain_send, cache) is None
    protocol, _ = uvicorn_connection()
    protocol.conn.extensions = [object()]  # type: ignore[list-item]
    assert direct_writer(protocol.send, cache) is None  # permessage-deflate
    protocol, _ = uvicorn_connection()
    protocol.conn = ServerProtocol(state=State.CONNECTING)
    assert direct_writer(protocol.send, cache) is None  # not accepted
    protocol, _ = uvicorn_connection()
    del protocol.disconnected  # a uvicorn that changed its attributes
    assert direct_writer(protocol.send, cache) is None
