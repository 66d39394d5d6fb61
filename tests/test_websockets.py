"""WebSocketPair, the two ends and the transport contract (reference §3.4)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectState,
    Response,
    WebSocket,
    WebSocketClose,
    WebSocketLimitError,
    WebSocketPair,
    WebSocketStateError,
)
from pyobjects.testing import MakeRuntime, ManualClock, run_in_durable_object

from .helpers import recv

DISCONNECTED = "WebSocket disconnected without sending Close frame."
NOT_ACCEPTED = (
    "You must call one of accept() or state.acceptWebSocket() on this WebSocket "
    "before sending messages."
)


def accepted_pair() -> tuple[WebSocket, WebSocket]:
    client, server = WebSocketPair()
    client.accept()
    server.accept()
    return client, server


def test_a_pair_is_two_joined_ends() -> None:
    pair = WebSocketPair()
    client, server = pair
    assert pair[0] is client
    assert pair[1] is server
    assert isinstance(pair, tuple)
    assert len(pair) == 2
    assert client is not server
    assert isinstance(client, WebSocket)
    assert client.ready_state == WebSocket.OPEN == WebSocket.READY_STATE_OPEN == 1
    assert repr(client) == "<WebSocket new open>"
    assert repr(pair).startswith("WebSocketPair(<WebSocket new open>")
    with pytest.raises(TypeError, match=r"use WebSocketPair\(\)"):
        WebSocket()


async def test_messages_travel_both_ways_in_order() -> None:
    client, server = accepted_pair()
    client.send("a")
    client.send(b"b")
    client.send(bytearray(b"c"))
    client.send(memoryview(b"d"))
    assert [await recv(server) for _ in range(4)] == ["a", b"b", b"c", b"d"]
    server.send("é")
    assert await recv(client) == "é"
    assert repr(server) == "<WebSocket accepted open>"


async def test_async_iteration_yields_messages_until_the_close() -> None:
    client, server = accepted_pair()
    for message in ["x", "y"]:
        client.send(message)
    client.close(1000, "done")
    assert [message async for message in server] == ["x", "y"]


async def test_messages_sent_before_the_peer_accepts_are_kept() -> None:
    client, server = WebSocketPair()
    server.accept()
    server.send("hello")
    client.accept()
    assert await recv(client) == "hello"


async def test_using_an_end_before_accepting_it_is_refused() -> None:
    client, _server = WebSocketPair()
    with pytest.raises(WebSocketStateError) as info:
        client.send("x")
    assert str(info.value) == NOT_ACCEPTED
    assert isinstance(info.value, TypeError)
    with pytest.raises(WebSocketStateError, match="before sending messages"):
        client.close()
    with pytest.raises(
        WebSocketStateError,
        match=r"^You must call accept\(\) on this WebSocket before receiving",
    ):
        await recv(client)
    client.accept()
    client.accept()  # a second accept() does nothing
    client.send("x")


async def test_a_clean_close_is_answered_and_reported_to_both_ends() -> None:
    client, server = accepted_pair()
    client.send("last")
    client.close(4001, "bye")
    assert client.ready_state == WebSocket.CLOSED  # the answer came at once
    assert await recv(server) == "last"
    close = WebSocketClose(code=4001, reason="bye", was_clean=True)
    assert await recv(server) == close
    assert await recv(server) == close  # and keeps coming
    assert server.ready_state == 3
    assert await recv(client) == close  # the server end's answer
    ported: Any = close  # camelCase aliases are added at run time
    assert ported.wasClean is True  # Cloudflare's spelling


async def test_a_close_that_waits_for_its_answer_is_closing() -> None:
    client, server = WebSocketPair()
    server.accept()
    server.close(1000)
    assert server.ready_state == WebSocket.CLOSING == 2  # the peer has not answered
    client.accept()  # answers the close it found waiting
    assert server.ready_state == WebSocket.CLOSED
    assert await recv(client) == WebSocketClose(code=1000, reason="", was_clean=True)


async def test_send_after_close_raises_and_after_the_peer_closed_is_ignored() -> None:
    client, server = accepted_pair()
    client.close()
    with pytest.raises(WebSocketStateError) as info:
        client.send("x")
    assert str(info.value) == "Can't call WebSocket send() after close()."
    client.close(4000)  # closing again does nothing
    server.send("dropped")  # the connection is closed: ignored
    server.close()
    assert await recv(client) == WebSocketClose(code=1000, reason="", was_clean=True)


@pytest.mark.parametrize("code", [0, 999, 1004, 1006, 1015, 5000])
def test_invalid_close_codes_are_refused(code: int) -> None:
    client, _ = accepted_pair()
    with pytest.raises(ValueError, match=rf"^Invalid WebSocket close code: {code}\.$"):
        client.close(code)


def test_close_arguments_are_checked() -> None:
    client, _ = accepted_pair()
    with pytest.raises(ValueError, match=r"^WebSocket close reason") as info:
        client.close(1000, "é" * 62)  # 124 bytes
    assert str(info.value) == (
        "WebSocket close reason must not be longer than 123 bytes when UTF-8 encoded."
    )
    with pytest.raises(ValueError, match=r"without a status code \(1005\) cannot"):
        client.close(1005, "why")
    with pytest.raises(TypeError, match="close code must be an int"):
        client.close("1000")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="close code must be an int"):
        client.close(True)
    with pytest.raises(TypeError, match="close reason must be a str"):
        client.close(1000, b"x")  # type: ignore[arg-type]
    client.close(1000, "x" * 123)


async def test_a_close_without_a_code_passes_as_1005() -> None:
    client, server = accepted_pair()
    client.close(1005)
    assert await recv(server) == WebSocketClose(code=1005, reason="", was_clean=True)


async def test_a_disconnect_is_an_abnormal_close_for_the_peer() -> None:
    client, server = accepted_pair()
    client.send("sent before")
    client._disconnect()
    assert client.ready_state == WebSocket.CLOSED
    assert await recv(server) == "sent before"
    abnormal = WebSocketClose(code=1006, reason=DISCONNECTED, was_clean=False)
    assert await recv(server) == abnormal
    assert await recv(client) == abnormal
    assert server.ready_state == WebSocket.CLOSED
    server.send("nobody is listening")  # ignored, no error


def test_message_size_and_type_are_checked() -> None:
    client, _ = accepted_pair()
    limit = 32 * 1024 * 1024
    with pytest.raises(WebSocketLimitError) as info:
        client.send(b"x" * (limit + 1))
    assert str(info.value) == (
        "WebSocket messages cannot be larger than 33554432 bytes. "
        "A message of size 33554433 was provided."
    )
    assert isinstance(info.value, ValueError)
    assert info.value.kind == "message"
    with pytest.raises(WebSocketLimitError, match="size 33554434 was"):
        client.send("é" * (limit // 2 + 1))  # counted in UTF-8 bytes
    client.send(b"x" * limit)
    with pytest.raises(TypeError, match="must be str or bytes, not int"):
        client.send(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lone surrogate"):
        client.send("\ud800")


def test_attachments_round_trip_as_fresh_copies() -> None:
    _, server = WebSocketPair()
    assert server.deserialize_attachment() is None
    value = {"user": "ann", "rooms": {"a", "b"}}
    server.serialize_attachment(value)
    value["user"] = "changed later"  # not kept: the copy was taken
    first = server.deserialize_attachment()
    assert first == {"user": "ann", "rooms": {"a", "b"}}
    first["user"] = "mutated"
    assert server.deserialize_attachment()["user"] == "ann"
    ported: Any = server  # camelCase aliases are added at run time
    ported.serializeAttachment([1, 2])
    assert ported.deserializeAttachment() == [1, 2]
    with pytest.raises(pyobjects.SerializationError):
        server.serialize_attachment(object())
    assert server.deserialize_attachment() == [1, 2]  # unchanged


def test_attachments_are_limited_to_16384_encoded_bytes() -> None:
    _, server = WebSocketPair()
    server.serialize_attachment(b"x" * 16_381)  # 3-byte header: exactly 16,384
    with pytest.raises(WebSocketLimitError) as info:
        server.serialize_attachment(b"x" * 16_382)
    assert str(info.value) == (
        "A WebSocket 'attachment' cannot be larger than 16384 bytes."
        "'attachment' was 16385 bytes."
    )
    assert (info.value.limit, info.value.size) == (16_384, 16_385)
    assert server.deserialize_attachment() == b"x" * 16_381


def test_camel_case_aliases() -> None:
    cls: Any = WebSocket  # camelCase aliases are added at run time
    assert cls.serializeAttachment is WebSocket.serialize_attachment
    assert cls.deserializeAttachment is WebSocket.deserialize_attachment
    assert cls.readyState is WebSocket.ready_state
    client: Any = WebSocketPair()[0]
    assert client.readyState == WebSocket.OPEN
    for snake, camel in [
        ("accept_websocket", "acceptWebSocket"),
        ("get_websockets", "getWebSockets"),
        ("get_tags", "getTags"),
        ("set_websocket_auto_response", "setWebSocketAutoResponse"),
        ("get_websocket_auto_response", "getWebSocketAutoResponse"),
        ("get_websocket_auto_response_timestamp", "getWebSocketAutoResponseTimestamp"),
        (
            "set_hibernatable_websocket_event_timeout",
            "setHibernatableWebSocketEventTimeout",
        ),
        (
            "get_hibernatable_websocket_event_timeout",
            "getHibernatableWebSocketEventTimeout",
        ),
    ]:
        assert getattr(DurableObjectState, camel) is getattr(DurableObjectState, snake)


# -- the transport contract, against an object --------------------------------


class Echo(DurableObject):
    """Hibernatable echo server: what the ASGI bridge talks to."""

    async def fetch(self, request: pyobjects.Request) -> Response:
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        return Response(status=101, websocket=client)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        if message == "close":
            ws.close(4000, "asked to")
        else:
            ws.send(message)


async def test_transport_contract_end_to_end(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"ECHO": Echo})
    stub = rt.env.ECHO.get_by_name("e")
    response = await stub.fetch("https://echo/ws")
    assert response.status == 101
    client = response.websocket
    assert isinstance(client, WebSocket)
    client.accept()
    client.send("hi")
    client.send(b"\x00\x01")
    assert await recv(client) == "hi"
    assert await recv(client) == b"\x00\x01"
    client.send("close")
    close = WebSocketClose(code=4000, reason="asked to", was_clean=True)
    assert await recv(client) == close
    assert await recv(client) == close
    client.send("late")  # after the server closed: ignored
    await manual_clock.advance(0)


async def test_transport_close_and_disconnect(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"ECHO": Echo})
    stub = rt.env.ECHO.get_by_name("e")
    first = (await stub.fetch("https://echo/ws")).websocket
    second = (await stub.fetch("https://echo/ws")).websocket
    assert isinstance(first, WebSocket)
    assert isinstance(second, WebSocket)
    first.accept()
    second.accept()
    first.close(1001, "tab closed")
    assert await recv(first) == WebSocketClose(
        code=1001, reason="tab closed", was_clean=True
    )
    second._disconnect()
    assert await recv(second) == WebSocketClose(
        code=1006, reason=DISCONNECTED, was_clean=False
    )

    async def count(obj: Echo, ctx: DurableObjectState) -> int:
        return len(ctx.get_websockets())

    await manual_clock.advance(0)  # let the close events run
    assert await run_in_durable_object(stub, count) == 0  # the sockets are gone


async def test_receive_waits_for_a_message() -> None:
    client, server = accepted_pair()
    got: list[object] = []

    async def reader() -> None:
        got.append(await recv(client))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        server.send("wake")
    assert got == ["wake"]
