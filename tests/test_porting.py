"""Code written the Cloudflare Python Workers way runs with only its imports changed.

The objects and workers below are spelled as Python Workers samples and docs
spell them (``WebSocketPair.new().object_values()``, ``web_socket=``,
``Response.json(data)``, camelCase state methods); only ``from workers import``
became ``from pyobjects import``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from pyobjects import (
    DurableObject,
    DurableObjectBinding,
    Headers,
    Request,
    Response,
    Runtime,
    WebSocketPair,
    Worker,
    WorkerEntrypoint,
)
from pyobjects._serialization import decode
from pyobjects.asgi import App
from pyobjects.storage import MemoryBackend
from pyobjects.testing import MakeRuntime, run_in_durable_object

from .asgi_driver import http, lifespan, websocket


class Chat(DurableObject):
    async def fetch(self, request: Any) -> Any:
        if request.headers.get("Upgrade") != "websocket":
            return Response("expected a WebSocket upgrade", 426)
        client, server = WebSocketPair.new().object_values()
        ctx: Any = self.ctx  # ported code is untyped; camelCase is not in the stubs
        ctx.acceptWebSocket(server)
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws: Any, message: Any) -> None:
        ctx: Any = self.ctx
        for socket in ctx.getWebSockets():
            socket.send(f"echo: {message}")


class Counter(DurableObject):
    async def fetch(self, request: Any) -> Any:
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        return Response.json({"count": count})


class Default(WorkerEntrypoint):
    async def fetch(self, request: Any) -> Any:
        path = request.path
        if path == "/old":
            return Response.redirect("https://example.test/new", 301)
        if path.startswith("/chat"):
            return await self.env.CHAT.getByName("room").fetch(request)
        if path == "/count":
            response = await self.env.COUNTER.getByName("c").fetch(request)
            data = await response.json()
            return Response.json({"seen": data["count"]}, 201)
        return Response("not found", 404, status_text="Nowhere")


def make_app() -> App:
    return App(Worker(Default, bindings={"CHAT": Chat, "COUNTER": Counter}))


async def test_a_python_workers_chat_room_accepts_and_echoes() -> None:
    app = make_app()
    async with lifespan(app), websocket(app, "/chat") as peer:
        assert (await peer.next())["type"] == "websocket.accept"
        await peer.send_text("hi")
        assert await peer.next() == {"type": "websocket.send", "text": "echo: hi"}
        await peer.disconnect(1000)


async def test_response_json_redirect_and_positional_status_through_the_app() -> None:
    app = make_app()
    async with lifespan(app):
        first = await http(app, "GET", "/count")
        second = await http(app, "GET", "/count")
        missing = await http(app, "GET", "/nowhere")
        moved = await http(app, "GET", "/old")
    assert (first.status, json.loads(first.body)) == (201, {"seen": 1})
    assert json.loads(second.body) == {"seen": 2}
    assert first.header("content-type") == "application/json"
    assert (missing.status, missing.body) == (404, b"not found")
    assert moved.status == 301
    assert moved.header("location") == "https://example.test/new"


def test_websocket_pair_new_object_values() -> None:
    pair = WebSocketPair.new()
    client, server = pair.object_values()
    assert (client, server) == (pair[0], pair[1])
    assert client is not server


def test_response_takes_web_socket_or_websocket_but_not_both() -> None:
    client, _ = WebSocketPair.new().object_values()
    assert Response(None, status=101, web_socket=client).websocket is client
    other, _ = WebSocketPair()
    with pytest.raises(TypeError, match="not both"):
        Response(status=101, websocket=client, web_socket=other)
    with pytest.raises(ValueError, match="101"):
        Response(web_socket=other)


async def test_response_json_is_a_constructor_on_the_class() -> None:
    r = Response.json({"a": [1]}, 202, status_text="Accepted", headers={"X-A": "1"})
    assert isinstance(r, Response)
    assert (r.status, r.status_text) == (202, "Accepted")
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-a"] == "1"
    assert await r.json() == {"a": [1]}  # and a body reader on the instance
    assert await Response.json([1, 2]).json() == [1, 2]
    typed = Response.json({}, headers={"content-type": "application/ld+json"})
    assert typed.headers["content-type"] == "application/ld+json"
    assert Response.from_json(None, status_text="x").status_text == "x"


async def test_response_status_positional_and_status_text() -> None:
    r = Response("gone", 404)
    assert (r.status, r.status_text, r.ok) == (404, "", False)
    assert Response("x", status_text="Fine").status_text == "Fine"
    assert r.copy().status_text == ""
    assert Response(None, 200, status_text="OK").copy().status_text == "OK"
    with pytest.raises(TypeError, match="status_text must be a str"):
        Response(status_text=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="line breaks"):
        Response(status_text="a\r\nx-injected: 1")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_response_redirect(status: int) -> None:
    r = Response.redirect("https://example.test/to", status)
    assert r.status == status
    assert r.headers["location"] == "https://example.test/to"
    assert Response.redirect("https://example.test/").status == 302


@pytest.mark.parametrize(
    ("url", "status", "error", "match"),
    [
        ("/relative", 302, ValueError, "absolute URL"),
        ("https://h/", 200, ValueError, "301, 302, 303, 307 or 308"),
        (5, 302, TypeError, "url must be a str"),
    ],
)
def test_bad_redirects(
    url: Any, status: int, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Response.redirect(url, status)


def test_headers_the_fetch_api_way() -> None:
    h = Headers({"Content-Type": "text/plain", "X-B": "2"})
    h.append("Set-Cookie", "a=1")
    h.append("x-b", "3")
    h.append("set-cookie", "b=2")
    assert h.has("content-type")
    assert not h.has("x-missing")
    assert h.entries() == [
        ("content-type", "text/plain"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("x-b", "2, 3"),
    ]
    assert h.keys() == ["content-type", "set-cookie", "set-cookie", "x-b"]
    assert h.values() == ["text/plain", "a=1", "b=2", "2, 3"]
    assert h.get_set_cookie() == ["a=1", "b=2"]
    assert h.getSetCookie() == ["a=1", "b=2"]  # type: ignore[attr-defined]
    assert Headers({"a": "1"}.items()) == Headers([["a", "1"]])  # type: ignore[list-item]


async def test_a_request_still_reads_json() -> None:
    r = Request("https://h/", method="POST", body='{"a": 1}')
    assert await r.json() == {"a": 1}


@pytest.mark.parametrize(
    "call",
    [
        lambda storage: storage.put(1, "x"),
        lambda storage: storage.get([1]),
        lambda storage: storage.delete([1]),
    ],
)
async def test_a_non_str_storage_key_says_what_cloudflare_would_do(
    make_runtime: MakeRuntime, call: Any
) -> None:
    rt = await make_runtime({"COUNTER": Counter})

    async def inside(obj: Any, ctx: Any) -> None:
        with pytest.raises(TypeError) as info:
            await call(ctx.storage)
        assert str(info.value) == (
            "storage key must be a str, not int (Cloudflare's JavaScript API "
            "converts any key to a string; here pass str(key))"
        )

    await run_in_durable_object(rt.env.COUNTER.get_by_name("k"), inside)


@pytest.mark.parametrize("op", ["get", "delete"])
async def test_a_non_str_key_given_alone_says_what_cloudflare_would_do(
    make_runtime: MakeRuntime, op: str
) -> None:
    rt = await make_runtime({"COUNTER": Counter})

    async def inside(obj: Any, ctx: Any) -> None:
        with pytest.raises(TypeError) as info:
            await getattr(ctx.storage, op)(1)
        assert str(info.value) == (
            f"{op}() takes a str key or a list of keys, not int (Cloudflare's "
            "JavaScript API converts any key to a string; here pass str(key))"
        )

    await run_in_durable_object(rt.env.COUNTER.get_by_name("k"), inside)


# What workerd 2026-11-23 (the npm package `workerd`) answered for
# `idFromName(name).toString()` in namespaces whose uniqueKey is
# "chat-worker-ChatRoom" and "chat-worker-Counter": the keys wrangler dev
# (Miniflare's getDurableObjectUniqueKey) gives the classes ChatRoom and
# Counter of a worker named "chat-worker".
WORKERD_IDS = {
    ("ChatRoom", "global"): (
        "23d59b097f3c2263f6274e695565669f6f2686d0780098ae0dafaf4112654a71"
    ),
    ("ChatRoom", "room-1"): (
        "c9446237ebd766e397c47876f5ec00cddb1630faca24f47a6357d4724df4e717"
    ),
    ("ChatRoom", ""): (
        "2f220ba233f42289d636a55fa3cdcc64c2079b4b7454e37fa443a38573ab885d"
    ),
    ("ChatRoom", "é🙂"): (
        "214992f3fd1df94fdf40c84c3d8be68988bab4f1834542c52c7e60bb78de2a20"
    ),
    ("Counter", "global"): (
        "cabb93854d4a836940eb1a2e55087edf183abf21fa0ed85b8058b17a60243016"
    ),
    ("Counter", "room-1"): (
        "9444e4353caca9e461d1e72d1dc7d94f4c809edea502ccc76a9fda7c625dc4d2"
    ),
}


class ChatRoom(DurableObject):
    async def own_id(self) -> str:
        return str(self.ctx.id)


@pytest.mark.parametrize(("class_name", "name"), sorted(WORKERD_IDS))
async def test_wrangler_keys_give_the_ids_wrangler_dev_gives(
    make_runtime: MakeRuntime, class_name: str, name: str
) -> None:
    cls = {"ChatRoom": ChatRoom, "Counter": Counter}[class_name]
    rt = await make_runtime(
        {"ROOMS": DurableObjectBinding.wrangler(cls, worker_name="chat-worker")}
    )
    assert str(rt.env.ROOMS.id_from_name(name)) == WORKERD_IDS[class_name, name]


async def test_worker_name_keys_every_binding_the_wrangler_way(
    make_runtime: MakeRuntime,
) -> None:
    worker = Worker(
        Default,
        name="chat-worker",
        bindings={
            "CHAT": ChatRoom,
            "COUNTER": DurableObjectBinding(object_class=Counter),
            "PINNED": DurableObjectBinding(object_class=Counter, unique_key="mine"),
        },
    )
    assert worker.name == "chat-worker"
    assert worker.bindings["CHAT"] == DurableObjectBinding(
        object_class=ChatRoom, unique_key="chat-worker-ChatRoom"
    )
    assert worker.bindings["PINNED"] == DurableObjectBinding(
        object_class=Counter, unique_key="mine"
    )
    rt = await make_runtime(worker.bindings)
    chat = rt.env.CHAT.get_by_name("global")
    assert await chat.own_id() == WORKERD_IDS["ChatRoom", "global"]
    assert (
        str(rt.env.COUNTER.id_from_name("room-1")) == (WORKERD_IDS["Counter", "room-1"])
    )
    # Without a name, namespaces stay keyed by binding name.
    assert Worker(Default, bindings={"CHAT": ChatRoom}).bindings["CHAT"] is ChatRoom


def test_wrangler_class_name_and_bad_names() -> None:
    binding = DurableObjectBinding.wrangler(
        Counter, worker_name="w", class_name="Renamed"
    )
    assert binding.unique_key == "w-Renamed"
    with pytest.raises(TypeError, match="worker_name must be a str"):
        DurableObjectBinding.wrangler(Counter, worker_name=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty str"):
        Worker(Default, bindings={}, name="")


class StreamConsumer(DurableObject):
    """A stream consumer as Python Workers write one: a background task started
    with ``ctx.waitUntil()`` stores its cursor after each event."""

    events: Any = None  # an anyio receive stream, set by the test

    async def start(self) -> None:
        ctx: Any = self.ctx
        ctx.waitUntil(self.consume())

    async def consume(self) -> None:
        async for n in self.events:
            await self.ctx.storage.put("cursor", n)


async def test_a_wait_until_task_commits_its_cursor_while_it_runs() -> None:
    backend = MemoryBackend()
    send, receive = anyio.create_memory_object_stream[int](1)
    StreamConsumer.events = receive
    with send, receive:
        async with Runtime(bindings={"S": StreamConsumer}, storage=backend) as rt:
            stub = rt.env.S.get_by_name("feed")
            await stub.start()
            store = backend.open("S", str(stub.id))
            try:
                for n in (1, 2, 3):
                    await send.send(n)
                    await anyio.wait_all_tasks_blocked()
                    # Durable while the task still runs (waiting for more).
                    assert decode((await store.get(["cursor"]))["cursor"]) == n
            finally:
                store.close()
                send.close()
