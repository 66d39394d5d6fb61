"""Hibernatable WebSockets: ctx API, events, gates, hibernation, resets (§3.4, §9)."""

from __future__ import annotations

import gc
import logging
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectState,
    Response,
    Runtime,
    WebSocket,
    WebSocketClose,
    WebSocketLimitError,
    WebSocketPair,
    WebSocketRequestResponsePair,
    WebSocketStateError,
)
from pyobjects.storage import MemoryBackend, StorageBackend
from pyobjects.testing import (
    MakeRuntime,
    ManualClock,
    crash_and_restart,
    evict,
    list_durable_object_ids,
    run_in_durable_object,
)

from .helpers import ControlledBackend, recv

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

DISCONNECTED = "WebSocket disconnected without sending Close frame."
ABNORMAL = WebSocketClose(code=1006, reason=DISCONNECTED, was_clean=False)
SHUTDOWN = WebSocketClose(
    code=1001, reason="Durable Object runtime shutting down", was_clean=True
)


class Chat(DurableObject):
    """Hibernatable sockets at /ws, plain ones (with a receive loop) at /plain."""

    built: ClassVar[list[weakref.ref[Chat]]] = []
    events: ClassVar[list[tuple[Any, ...]]] = []
    gate: ClassVar[anyio.Event]
    fail_constructor: ClassVar[bool] = False

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        if Chat.fail_constructor:
            raise RuntimeError("constructor failed")
        Chat.built.append(weakref.ref(self))

    async def fetch(self, request: pyobjects.Request) -> Response:
        params = parse_qs(urlsplit(request.url).query)
        client, server = WebSocketPair()
        if request.path == "/plain":
            server.accept()
            if params.get("loop") != ["no"]:
                self.ctx.wait_until(self.serve(server))
        else:
            self.ctx.accept_websocket(server, params.get("tag", []))
            server.serialize_attachment({"user": params.get("user", ["?"])[0]})
        return Response(status=101, websocket=client)

    async def serve(self, ws: WebSocket) -> None:
        async for message in ws:
            await self.handle(ws, message)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        await self.handle(ws, message)

    async def handle(self, ws: WebSocket, message: str | bytes) -> None:
        if isinstance(message, bytes):
            ws.send(message[::-1])
            return
        command, _, arg = message.partition(":")
        storage = self.ctx.storage
        if command == "echo":
            ws.send(arg)
        elif command == "count":
            n = (await storage.get("n") or 0) + 1
            storage.put("n", n)
            ws.send(str(n))
        elif command == "whoami":
            ws.send(f"{len(Chat.built)}:{id(ws)}:{self.ctx.id.name}")
        elif command == "tags":
            ws.send(",".join(self.ctx.get_tags(ws)))
        elif command == "user":
            ws.send(ws.deserialize_attachment()["user"])
        elif command == "users":
            sockets = self.ctx.get_websockets(arg or None)
            ws.send(",".join(w.deserialize_attachment()["user"] for w in sockets))
        elif command == "raise":
            raise ValueError("boom")
        elif command == "abort":
            self.ctx.abort("aborted by a message")
        elif command == "wait":
            Chat.events.append(("waiting", arg))
            await Chat.gate.wait()
            ws.send(f"done:{arg}")
        elif command == "close":
            ws.close(4000, "done")
        elif command == "store":
            storage.put("stored", arg)  # no reply: nothing else commits it
        elif command == "broadcast":
            for other in self.ctx.get_websockets():
                other.send(arg)
        else:
            ws.send(f"?{message}")

    async def websocket_close(
        self, ws: WebSocket, code: int, reason: str, was_clean: bool
    ) -> None:
        listed = ws in self.ctx.get_websockets()
        Chat.events.append(("close", code, reason, was_clean, ws.ready_state, listed))

    async def websocket_error(self, ws: WebSocket, error: BaseException) -> None:
        Chat.events.append(("error", error))

    async def value(self) -> int:
        return await self.ctx.storage.get("n") or 0

    async def abort_now(self) -> None:
        self.ctx.abort()


@pytest.fixture(autouse=True)
async def _reset_chat() -> AsyncIterator[None]:
    Chat.built = []
    Chat.events = []
    Chat.gate = anyio.Event()
    Chat.fail_constructor = False
    yield
    Chat.gate.set()


async def connect(stub: pyobjects.DurableObjectStub, path: str = "/ws") -> WebSocket:
    response = await stub.fetch(f"https://chat{path}")
    assert response.status == 101
    client = response.websocket
    assert isinstance(client, WebSocket)
    client.accept()
    return client


async def ask(client: WebSocket, message: str | bytes) -> object:
    client.send(message)
    return await recv(client)


async def inside(stub: pyobjects.DurableObjectStub, fn: Any) -> Any:
    async def body(obj: Chat, ctx: DurableObjectState) -> Any:
        return fn(ctx)

    return await run_in_durable_object(stub, body)


# -- events -----------------------------------------------------------------------


async def test_messages_become_events_and_replies_reach_the_client(
    make_runtime: MakeRuntime, backend: StorageBackend
) -> None:
    rt = await make_runtime({"CHAT": Chat}, storage=backend)
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)
    assert await ask(client, "echo:hi") == "hi"
    assert await ask(client, b"abc") == b"cba"
    assert await ask(client, "count") == "1"
    assert await ask(client, "count") == "2"
    assert await stub.value() == 2  # the events' writes were committed
    assert len(Chat.built) == 1


async def test_get_websockets_lists_newest_first_and_by_tag(
    make_runtime: MakeRuntime,
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    a = await connect(stub, "/ws?user=a&tag=x&tag=all")
    await connect(stub, "/ws?user=b&tag=y&tag=all")
    await connect(stub, "/ws?user=c&tag=x&tag=x")
    assert await ask(a, "users") == "c,b,a"
    assert await ask(a, "users:x") == "a,c"
    assert await ask(a, "users:all") == "a,b"
    assert await ask(a, "users:none") == ""
    assert await ask(a, "tags") == "x,all"
    assert await ask(a, "user") == "a"
    assert await ask(a, "broadcast:hey") == "hey"


async def test_a_handler_that_raises_is_logged_and_the_socket_stays(
    make_runtime: MakeRuntime,
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    client = await connect(rt.env.CHAT.get_by_name("room"))
    with caplog.at_level(logging.ERROR, logger="pyobjects"):
        client.send("raise")
        assert await ask(client, "echo:still here") == "still here"
    assert "uncaught exception in websocket_message() of Durable Object Chat" in (
        caplog.text
    )
    assert "ValueError: boom" in caplog.text
    assert len(Chat.built) == 1  # not reset


async def test_events_of_one_socket_run_in_order_others_interleave(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    first = await connect(stub)
    second = await connect(stub)
    first.send("wait:a")
    first.send("echo:b")  # must wait for "wait:a" to finish
    await manual_clock.advance(0)
    assert Chat.events == [("waiting", "a")]
    assert await ask(second, "echo:c") == "c"  # another socket is not held up
    Chat.gate.set()
    assert await recv(first) == "done:a"
    assert await recv(first) == "b"


async def test_messages_queue_at_the_input_gate_in_order_with_calls(
    make_runtime: MakeRuntime, manual_clock: ManualClock, backend: StorageBackend
) -> None:
    rt = await make_runtime({"CHAT": Chat}, storage=backend)
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)
    release = anyio.Event()
    results: list[int] = []

    async def block(obj: Chat, ctx: DurableObjectState) -> None:
        ctx.block_concurrency_while(release.wait)

    async def call() -> None:
        results.append(await stub.value())

    replies: list[object] = []

    async def read() -> None:
        replies.append(await recv(client))

    await run_in_durable_object(stub, block)
    client.send("count")
    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await manual_clock.advance(0)
        tg.start_soon(call)
        await manual_clock.advance(0)
        assert replies == []  # the message waits at the gate...
        assert results == []  # ...and the call behind it
        release.set()
    assert replies == ["1"]
    assert results == [1]  # the message got in before the call


async def test_close_and_disconnect_events(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    by_client = await connect(stub)
    by_server = await connect(stub)
    dropped = await connect(stub)
    by_client.close(4001, "leaving")
    assert await recv(by_client) == WebSocketClose(
        code=4001, reason="leaving", was_clean=True
    )
    by_server.send("close")
    assert await recv(by_server) == WebSocketClose(
        code=4000, reason="done", was_clean=True
    )
    dropped._disconnect()
    await manual_clock.advance(0)
    # Each handler saw its socket CLOSED (3) and still listed.
    assert Chat.events == [
        ("close", 4001, "leaving", True, 3, True),
        ("close", 4000, "done", True, 3, True),
        ("close", 1006, DISCONNECTED, False, 3, True),
    ]
    assert await inside(stub, lambda ctx: ctx.get_websockets()) == []


async def test_a_transport_error_is_a_websocket_error_event(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)
    error = ValueError("bad frame")
    client._disconnect(error)
    await manual_clock.advance(0)
    assert Chat.events == [("error", error)]
    assert await inside(stub, lambda ctx: ctx.get_websockets()) == []


async def test_missing_handlers_ignore_events_and_camel_case_ones_work(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    seen: list[object] = []

    class Camel(DurableObject):
        async def fetch(self, request: pyobjects.Request) -> Response:
            client, server = WebSocketPair()
            ctx: Any = self.ctx  # camelCase aliases are added at run time
            ctx.acceptWebSocket(server, ["t"])
            return Response(status=101, websocket=client)

        async def webSocketMessage(self, ws: WebSocket, message: Any) -> None:
            ctx: Any = self.ctx
            ws.send(f"{message}:{ctx.getTags(ws)}:{len(ctx.getWebSockets())}")

    class Silent(DurableObject):
        async def fetch(self, request: pyobjects.Request) -> Response:
            client, server = WebSocketPair()
            self.ctx.accept_websocket(server)
            return Response(status=101, websocket=client)

        async def ping(self) -> None:
            seen.append("ping")

    rt = await make_runtime({"CAMEL": Camel, "SILENT": Silent})
    camel = await connect(rt.env.CAMEL.get_by_name("c"))
    assert await ask(camel, "hi") == "hi:['t']:1"
    camel.close()
    silent_stub = rt.env.SILENT.get_by_name("s")
    silent = await connect(silent_stub)
    silent.send("nobody handles this")
    silent.close()
    await manual_clock.advance(0)
    await silent_stub.ping()
    assert seen == ["ping"]
    assert await inside(silent_stub, lambda ctx: ctx.get_websockets()) == []


# -- the ctx API: checks and limits -------------------------------------------------


async def test_accept_websocket_refuses_sockets_in_the_wrong_state(
    make_runtime: MakeRuntime,
) -> None:
    rt = await make_runtime({"CHAT": Chat})

    def check(ctx: DurableObjectState) -> None:
        _, server = WebSocketPair()
        server.accept()
        with pytest.raises(WebSocketStateError) as info:
            ctx.accept_websocket(server)
        assert str(info.value) == (
            "Cannot call `acceptWebSocket()` if the WebSocket was already accepted "
            "via `accept()`"
        )
        client, server = WebSocketPair()
        ctx.accept_websocket(server)
        with pytest.raises(WebSocketStateError, match="already accepted via"):
            ctx.accept_websocket(server)
        with pytest.raises(WebSocketStateError) as info:
            server.accept()
        assert str(info.value) == "Can't accept() WebSocket after enabling hibernation."
        client, server = WebSocketPair()
        client.accept()
        with pytest.raises(WebSocketStateError) as info:
            ctx.accept_websocket(server)
        assert str(info.value) == (
            "Cannot call `acceptWebSocket()` on this WebSocket because its pair has "
            "already been accepted or used in a Response."
        )
        with pytest.raises(TypeError, match="takes a WebSocket, not str"):
            ctx.accept_websocket("ws")  # type: ignore[arg-type]

    await inside(rt.env.CHAT.get_by_name("room"), check)


async def test_get_tags_and_receive_refuse_the_wrong_kind_of_socket(
    make_runtime: MakeRuntime,
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")

    async def check(obj: Chat, ctx: DurableObjectState) -> None:
        _, fresh = WebSocketPair()
        with pytest.raises(WebSocketStateError) as info:
            ctx.get_tags(fresh)
        assert str(info.value) == (
            "you must call 'acceptWebSocket()' before attempting to access the tags "
            "of a WebSocket."
        )
        _, plain = WebSocketPair()
        plain.accept()
        with pytest.raises(WebSocketStateError) as info:
            ctx.get_tags(plain)
        assert str(info.value) == "only hibernatable websockets can have tags."
        plain.close()
        _, hibernatable = WebSocketPair()
        ctx.accept_websocket(hibernatable, ["a", "a", "b"])
        assert ctx.get_tags(hibernatable) == ["a", "b"]
        with pytest.raises(WebSocketStateError, match="websocket_message"):
            await recv(hibernatable)
        with pytest.raises(TypeError, match="takes a WebSocket"):
            ctx.get_tags("x")  # type: ignore[arg-type]

    await run_in_durable_object(stub, check)


async def test_tag_limits(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime({"CHAT": Chat})

    def check(ctx: DurableObjectState) -> None:
        ten = [f"t{i}" for i in range(10)]
        ctx.accept_websocket(WebSocketPair()[1], ten)
        ctx.accept_websocket(WebSocketPair()[1], ["same"] * 50)
        for tags in (
            [*ten, "t10"],
            [*ten, "t0"],  # counted before duplicates are dropped, as in workerd
        ):
            with pytest.raises(WebSocketLimitError) as info:
                ctx.accept_websocket(WebSocketPair()[1], tags)
            assert str(info.value) == (
                "a Hibernatable WebSocket cannot have more than 10 tags"
            )
            assert info.value.kind == "tags"
        ctx.accept_websocket(WebSocketPair()[1], ["x" * 256])
        with pytest.raises(WebSocketLimitError) as info:
            ctx.accept_websocket(WebSocketPair()[1], ["x" * 257])
        assert str(info.value) == (
            f'"{"x" * 257}" is longer than the max tag length (256 characters).'
        )
        with pytest.raises(WebSocketLimitError, match="max tag length"):
            ctx.accept_websocket(WebSocketPair()[1], ["é" * 129])  # 258 bytes
        with pytest.raises(TypeError, match="not a single str"):
            ctx.accept_websocket(WebSocketPair()[1], "tag")
        with pytest.raises(TypeError, match="tags must be str, not int"):
            ctx.accept_websocket(WebSocketPair()[1], [1])  # type: ignore[list-item]
        assert len(ctx.get_websockets()) == 3  # refused sockets were not taken

    await inside(rt.env.CHAT.get_by_name("room"), check)


async def test_at_most_32768_sockets_per_object(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime({"CHAT": Chat})

    def fill(ctx: DurableObjectState) -> None:
        for _ in range(32_768):
            ctx.accept_websocket(WebSocketPair()[1])
        with pytest.raises(WebSocketLimitError) as info:
            ctx.accept_websocket(WebSocketPair()[1])
        assert str(info.value) == (
            "only 32768 websockets can be accepted on a single Durable Object instance"
        )
        assert len(ctx.get_websockets()) == 32_768

    await inside(rt.env.CHAT.get_by_name("room"), fill)


async def test_event_timeout_setting_and_limits(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime({"CHAT": Chat})

    def check(ctx: DurableObjectState) -> None:
        assert ctx.get_hibernatable_websocket_event_timeout() is None
        ctx.set_hibernatable_websocket_event_timeout()  # nothing to clear
        ctx.set_hibernatable_websocket_event_timeout(604_800_000)
        assert ctx.get_hibernatable_websocket_event_timeout() == 604_800_000
        with pytest.raises(WebSocketLimitError) as info:
            ctx.set_hibernatable_websocket_event_timeout(604_800_001)
        assert str(info.value) == "Event timeout should not exceed 604800000 ms."
        ported: Any = ctx  # camelCase aliases are added at run time
        ported.setHibernatableWebSocketEventTimeout(0)  # 0 clears it
        assert ported.getHibernatableWebSocketEventTimeout() is None
        ctx.set_hibernatable_websocket_event_timeout(5)
        ctx.set_hibernatable_websocket_event_timeout(None)
        assert ctx.get_hibernatable_websocket_event_timeout() is None
        with pytest.raises(ValueError, match="must not be negative"):
            ctx.set_hibernatable_websocket_event_timeout(-1)
        with pytest.raises(TypeError, match="must be an int"):
            ctx.set_hibernatable_websocket_event_timeout(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be an int"):
            ctx.set_hibernatable_websocket_event_timeout(True)

    await inside(rt.env.CHAT.get_by_name("room"), check)


async def test_an_event_over_the_timeout_resets_the_object(
    make_runtime: MakeRuntime,
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)
    other = await connect(stub)
    await inside(stub, lambda ctx: ctx.set_hibernatable_websocket_event_timeout(5_000))
    assert await ask(client, "echo:quick") == "quick"  # within the limit
    client.send("wait:forever")
    client.send("echo:queued")  # behind it; dropped by the reset
    await manual_clock.advance(4_999)
    assert client.ready_state == WebSocket.OPEN
    await manual_clock.advance(1)
    assert await recv(client) == ABNORMAL
    assert await recv(other) == ABNORMAL
    assert "Actor exceeded event execution time and was disconnected." in caplog.text
    fresh = rt.env.CHAT.get_by_name("room")
    assert await inside(fresh, lambda ctx: ctx.get_websockets()) == []


async def test_auto_response_setting_and_limits(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime({"CHAT": Chat})

    def check(ctx: DurableObjectState) -> None:
        assert ctx.get_websocket_auto_response() is None
        ctx.set_websocket_auto_response()  # nothing to clear
        pair = WebSocketRequestResponsePair("ping", "pong")
        assert (pair.request, pair.response) == ("ping", "pong")
        assert repr(pair) == (
            "WebSocketRequestResponsePair(request='ping', response='pong')"
        )
        ctx.set_websocket_auto_response(pair)
        got = ctx.get_websocket_auto_response()
        assert got == pair
        assert hash(got) == hash(pair)
        ported: Any = ctx  # camelCase aliases are added at run time
        ported.setWebSocketAutoResponse(None)
        assert ported.getWebSocketAutoResponse() is None
        with pytest.raises(WebSocketLimitError) as info:
            ctx.set_websocket_auto_response(
                WebSocketRequestResponsePair("a" * 2049, "ok")
            )
        assert str(info.value) == (
            "Request cannot be larger than 2048 bytes. "
            "A request of size 2049 was provided."
        )
        with pytest.raises(WebSocketLimitError) as info:
            ctx.set_websocket_auto_response(
                WebSocketRequestResponsePair("ok", "é" * 1025)
            )
        assert str(info.value) == (
            "Response cannot be larger than 2048 bytes. "
            "A response of size 2050 was provided."
        )
        ctx.set_websocket_auto_response(WebSocketRequestResponsePair("a" * 2048, ""))
        with pytest.raises(TypeError, match="must be a str"):
            WebSocketRequestResponsePair("ping", b"pong")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes a WebSocketRequestResponsePair"):
            ctx.set_websocket_auto_response(("ping", "pong"))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes a WebSocket"):
            ctx.get_websocket_auto_response_timestamp(None)  # type: ignore[arg-type]

    await inside(rt.env.CHAT.get_by_name("room"), check)


# -- the output gate ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws", "/plain"])
async def test_a_send_after_a_write_waits_until_the_write_is_durable(
    manual_clock: ManualClock, backend: StorageBackend, path: str
) -> None:
    controlled = ControlledBackend(backend)
    async with Runtime(
        bindings={"CHAT": Chat}, storage=controlled, clock=manual_clock
    ) as rt:
        client = await connect(rt.env.CHAT.get_by_name("room"), path)
        got: list[object] = []

        async def read() -> None:
            got.append(await recv(client))

        controlled.hold = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            client.send("count")
            await manual_clock.advance(0)
            assert got == []  # the reply waits for the commit
            assert controlled.commits
            controlled.hold.set()
        assert got == ["1"]
        assert await ask(client, "echo:x") == "x"


@pytest.mark.parametrize("path", ["/ws", "/plain"])
async def test_a_send_is_never_delivered_if_the_commit_fails(
    manual_clock: ManualClock, backend: StorageBackend, path: str
) -> None:
    controlled = ControlledBackend(backend)
    async with Runtime(
        bindings={"CHAT": Chat}, storage=controlled, clock=manual_clock
    ) as rt:
        stub = rt.env.CHAT.get_by_name("room")
        client = await connect(stub, path)
        controlled.fail_next = 1
        client.send("count")
        assert await recv(client) == ABNORMAL  # never "1": the object reset
        assert await rt.env.CHAT.get_by_name("room").value() == 0


# -- hibernation ---------------------------------------------------------------------


async def test_an_object_with_only_sockets_hibernates_and_wakes_on_a_message(
    make_runtime: MakeRuntime, manual_clock: ManualClock, backend: StorageBackend
) -> None:
    rt = await make_runtime({"CHAT": Chat}, storage=backend, idle_timeout=10.0)
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub, "/ws?user=ann&tag=blue")
    assert await ask(client, "count") == "1"
    built, ws_id, name = str(await ask(client, "whoami")).split(":")
    assert (built, name) == ("1", "room")

    await manual_clock.advance(9_999)
    assert rt.statistics().live_objects == 1
    await manual_clock.advance(1)
    assert rt.statistics().live_objects == 0  # evicted after its idle time...
    gc.collect()
    assert Chat.built[0]() is None  # ...and really dropped
    assert client.ready_state == WebSocket.OPEN  # while the client stays connected

    # The next message builds a new instance and reaches it, with the same
    # socket object, its tags and attachment, and the object's storage.
    assert await ask(client, "whoami") == f"2:{ws_id}:room"
    assert Chat.built[1]() is not None
    assert await ask(client, "tags") == "blue"
    assert await ask(client, "user") == "ann"
    assert await ask(client, "count") == "2"


async def test_a_close_wakes_a_hibernated_object(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    client = await connect(rt.env.CHAT.get_by_name("room"))
    await manual_clock.advance(10_000)
    assert rt.statistics().live_objects == 0
    client.close(1000, "bye")
    await manual_clock.advance(0)
    assert len(Chat.built) == 2
    assert Chat.events == [("close", 1000, "bye", True, 3, True)]


async def test_auto_responses_do_not_wake_a_hibernated_object(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)

    def configure(ctx: DurableObjectState) -> object:
        ctx.set_websocket_auto_response(WebSocketRequestResponsePair("ping", "pong"))
        return ctx.get_websocket_auto_response_timestamp(ctx.get_websockets()[0])

    assert await inside(stub, configure) is None  # never answered yet
    await manual_clock.advance(10_000)
    assert rt.statistics().live_objects == 0
    await manual_clock.advance(1_234)
    answered_at = manual_clock.now_ms()
    assert await ask(client, "ping") == "pong"
    assert await ask(client, "ping") == "pong"
    assert rt.statistics().live_objects == 0  # answered without building the object
    assert len(Chat.built) == 1
    assert await ask(client, "Ping") == "?Ping"  # not the request: an event
    assert len(Chat.built) == 2

    def timestamp(ctx: DurableObjectState) -> object:
        return ctx.get_websocket_auto_response_timestamp(ctx.get_websockets()[0])

    expected = datetime.fromtimestamp(answered_at / 1000, tz=UTC)
    assert await inside(stub, timestamp) == expected

    def clear(ctx: DurableObjectState) -> None:
        ctx.set_websocket_auto_response()

    await inside(stub, clear)
    assert await ask(client, "ping") == "?ping"
    assert await inside(stub, timestamp) == expected  # kept after clearing


async def test_auto_responses_keep_their_place_behind_queued_events(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)
    await inside(
        stub,
        lambda ctx: ctx.set_websocket_auto_response(
            WebSocketRequestResponsePair("ping", "pong")
        ),
    )
    client.send("wait:a")
    client.send("ping")
    await manual_clock.advance(0)
    Chat.gate.set()
    assert await recv(client) == "done:a"
    assert await recv(client) == "pong"


async def test_testing_evict_hibernates_the_sockets(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat}, idle_timeout=None)
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub, "/ws?user=bo")
    await evict(stub)
    assert rt.statistics().live_objects == 0
    gc.collect()
    assert Chat.built[0]() is None
    assert await ask(client, "user") == "bo"
    assert len(Chat.built) == 2


async def test_a_hub_is_dropped_with_its_last_socket_and_instance(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)
    await manual_clock.advance(10_000)
    assert rt.statistics().hibernated_websockets == 1  # the sockets are kept
    client.close()
    await manual_clock.advance(10_000)  # the close event woke it; idle again
    assert rt.statistics().live_objects == 0
    assert rt._catalog.hubs == {}  # nothing left behind


async def test_sockets_are_independent_per_object(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime({"CHAT": Chat})
    a = await connect(rt.env.CHAT.get_by_name("a"), "/ws?user=a1")
    await connect(rt.env.CHAT.get_by_name("a"), "/ws?user=a2")
    b = await connect(rt.env.CHAT.get_by_name("b"), "/ws?user=b1")
    assert await ask(a, "users") == "a2,a1"
    assert await ask(b, "users") == "b1"


# -- plain (non-hibernatable) sockets ------------------------------------------------


async def test_a_plain_socket_keeps_the_object_alive(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub, "/plain?loop=no")
    await manual_clock.advance(65_000)
    assert (
        rt.statistics().live_objects == 1
    )  # no receive loop running: the socket does it
    with pytest.raises(RuntimeError) as info:
        await evict(stub)
    assert str(info.value) == (
        f"cannot evict Durable Object {stub.id}: it has open WebSockets that are "
        "not hibernatable (accepted with ws.accept(), not ctx.accept_websocket())"
    )
    client.close()
    assert await recv(client) == WebSocketClose(code=1000, reason="", was_clean=True)
    await manual_clock.advance(9_999)
    assert rt.statistics().live_objects == 1
    await manual_clock.advance(1)
    assert rt.statistics().live_objects == 0  # idle time counted from the close


async def test_a_plain_socket_with_a_receive_loop(
    make_runtime: MakeRuntime, manual_clock: ManualClock, backend: StorageBackend
) -> None:
    rt = await make_runtime({"CHAT": Chat}, storage=backend)
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub, "/plain")
    assert await ask(client, "echo:hi") == "hi"
    assert await ask(client, b"xy") == b"yx"
    assert await ask(client, "count") == "1"
    await manual_clock.advance(60_000)
    assert rt.statistics().live_objects == 1
    # A write with no reply after it is committed while the loop waits.
    other = rt.env.CHAT.get_by_name("other")
    other_client = await connect(other, "/plain")
    other_client.send("store:x")
    await manual_clock.advance(0)
    assert other.id in await list_durable_object_ids(rt.env.CHAT)
    other_client.close()
    client.close()
    await manual_clock.advance(10_000)
    assert rt.statistics().live_objects == 0


async def test_a_plain_receive_loop_waits_for_block_concurrency_while(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub, "/plain")
    release = anyio.Event()

    async def block(obj: Chat, ctx: DurableObjectState) -> None:
        ctx.block_concurrency_while(release.wait)

    await run_in_durable_object(stub, block)
    got: list[object] = []

    async def read() -> None:
        got.append(await ask(client, "echo:x"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await manual_clock.advance(0)
        assert got == []
        release.set()
    assert got == ["x"]


# -- resets and shutdown ----------------------------------------------------------


async def test_a_reset_disconnects_every_socket_of_the_object(
    make_runtime: MakeRuntime, manual_clock: ManualClock, backend: StorageBackend
) -> None:
    rt = await make_runtime({"CHAT": Chat}, storage=backend)
    stub = rt.env.CHAT.get_by_name("room")
    hibernatable = await connect(stub)
    plain = await connect(stub, "/plain")
    elsewhere = await connect(rt.env.CHAT.get_by_name("other"))
    hibernatable.send("abort")
    assert await recv(hibernatable) == ABNORMAL
    assert await recv(plain) == ABNORMAL
    await manual_clock.advance(0)
    assert Chat.events == []  # a reset object gets no close events
    assert await ask(elsewhere, "echo:ok") == "ok"  # other objects keep theirs
    fresh = rt.env.CHAT.get_by_name("room")
    assert await inside(fresh, lambda ctx: ctx.get_websockets()) == []
    again = await connect(fresh)
    assert await ask(again, "echo:back") == "back"


async def test_abort_from_a_call_disconnects_hibernated_sockets(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")
    client = await connect(stub)
    with pytest.raises(pyobjects.DurableObjectResetError):
        await stub.abort_now()
    assert await recv(client) == ABNORMAL


async def test_a_constructor_failing_on_wake_disconnects_the_sockets(
    make_runtime: MakeRuntime,
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    client = await connect(rt.env.CHAT.get_by_name("room"))
    await manual_clock.advance(10_000)
    Chat.fail_constructor = True
    client.send("echo:x")
    assert await recv(client) == ABNORMAL
    assert "RuntimeError: constructor failed" in caplog.text


async def test_runtime_shutdown_closes_sockets_with_1001(
    manual_clock: ManualClock,
) -> None:
    async with Runtime(bindings={"CHAT": Chat}, clock=manual_clock) as rt:
        stub = rt.env.CHAT.get_by_name("room")
        hibernatable = await connect(stub)
        hibernated = await connect(rt.env.CHAT.get_by_name("asleep"))
        plain = await connect(stub, "/plain")
        await evict(rt.env.CHAT.get_by_name("asleep"))
    for client in (hibernatable, hibernated, plain):
        assert await recv(client) == SHUTDOWN
        assert client.ready_state == WebSocket.CLOSED
        client.send("ignored")
    assert Chat.events == []


async def test_shutdown_delivers_messages_whose_writes_it_commits(
    manual_clock: ManualClock,
) -> None:
    class Writer(DurableObject):
        async def fetch(self, request: pyobjects.Request) -> Response:
            client, server = WebSocketPair()
            self.ctx.accept_websocket(server)
            self.ctx.storage.put("k", 1)
            server.send("after the write")  # held until the write commits
            return Response(status=101, websocket=client)

    async with Runtime(bindings={"W": Writer}, clock=manual_clock) as rt:
        response = await rt.env.W.get_by_name("w").fetch("https://w/")
        client = response.websocket
        assert isinstance(client, WebSocket)
        client.accept()
    assert await recv(client) == "after the write"
    assert await recv(client) == SHUTDOWN


async def test_a_crash_drops_every_connection(manual_clock: ManualClock) -> None:
    backend = MemoryBackend()
    async with Runtime(
        bindings={"CHAT": Chat}, clock=manual_clock, storage=backend
    ) as rt:
        client = await connect(rt.env.CHAT.get_by_name("room"))
        plain = await connect(rt.env.CHAT.get_by_name("room"), "/plain")
        asleep = await connect(rt.env.CHAT.get_by_name("asleep"))
        await evict(rt.env.CHAT.get_by_name("asleep"))
        async with crash_and_restart(rt) as rt2:
            assert await recv(client) == ABNORMAL
            assert await recv(plain) == ABNORMAL
            assert await recv(asleep) == ABNORMAL
            stub = rt2.env.CHAT.get_by_name("room")
            assert await inside(stub, lambda ctx: ctx.get_websockets()) == []


async def test_shutdown_with_an_event_waiting_at_the_gate_logs_nothing(
    manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with Runtime(bindings={"CHAT": Chat}, clock=manual_clock) as rt:
        stub = rt.env.CHAT.get_by_name("room")
        client = await connect(stub)
        never = anyio.Event()

        async def block(obj: Chat, ctx: DurableObjectState) -> None:
            ctx.block_concurrency_while(never.wait)

        await run_in_durable_object(stub, block)
        client.send("echo:stuck")
        await manual_clock.advance(0)
    assert await recv(client) == SHUTDOWN
    assert "uncaught exception" not in caplog.text


async def test_a_held_message_is_dropped_if_the_peer_vanishes_meanwhile(
    manual_clock: ManualClock,
) -> None:
    controlled = ControlledBackend(MemoryBackend())
    async with Runtime(
        bindings={"CHAT": Chat}, storage=controlled, clock=manual_clock
    ) as rt:
        stub = rt.env.CHAT.get_by_name("room")
        client = await connect(stub)
        controlled.hold = anyio.Event()
        client.send("count")  # its reply waits for the commit
        await manual_clock.advance(0)
        client._disconnect()
        controlled.hold.set()
        await manual_clock.advance(0)
        assert await recv(client) == ABNORMAL  # the reply was never delivered
        assert Chat.events == [("close", 1006, DISCONNECTED, False, 3, True)]
        assert await stub.value() == 1


async def test_accepting_a_socket_whose_peer_already_vanished(
    make_runtime: MakeRuntime, manual_clock: ManualClock
) -> None:
    rt = await make_runtime({"CHAT": Chat})
    stub = rt.env.CHAT.get_by_name("room")

    def accept(ctx: DurableObjectState) -> None:
        client, server = WebSocketPair()
        client._disconnect()
        ctx.accept_websocket(server)

    await inside(stub, accept)
    await manual_clock.advance(0)
    assert Chat.events == [("close", 1006, DISCONNECTED, False, 3, True)]
    assert await inside(stub, lambda ctx: ctx.get_websockets()) == []
