"""Static type checks of the public API (checked by mypy, never run by pytest)."""

from __future__ import annotations

from typing import Any, assert_type

import pyobjects
from pyobjects.storage import Storage, Transaction


async def storage_types(storage: Storage) -> None:
    assert_type(await storage.get("k"), Any)
    assert_type(await storage.get(["a", "b"]), dict[str, Any])
    assert_type(await storage.delete("k"), bool)
    assert_type(await storage.delete(["a"]), int)
    assert_type(await storage.list(prefix="a"), dict[str, Any])
    storage.put("k", 1)  # un-awaited writes type-check too

    async def closure(txn: Transaction) -> int:
        return 1

    assert_type(await storage.transaction(closure), int)
    async with storage.transaction() as txn:
        assert_type(txn, Transaction)


def id_types(ns: pyobjects.DurableObjectNamespace) -> None:
    assert_type(ns.id_from_name("x"), pyobjects.DurableObjectId)
    assert_type(ns.get_by_name("x"), pyobjects.DurableObjectStub)
    assert_type(ns.get_by_name("x").name, str | None)


async def http_types() -> None:
    response = pyobjects.Response.from_json({"a": 1})
    assert_type(await response.text(), str)
    assert_type(response.status, int)


async def worker_types(request: pyobjects.Request) -> None:
    from pyobjects.asgi import App

    async def fetch(
        request: pyobjects.Request, env: pyobjects.Env
    ) -> pyobjects.Response:
        return pyobjects.Response("ok")

    class Entry(pyobjects.WorkerEntrypoint):
        async def fetch(self, request: pyobjects.Request) -> pyobjects.Response:
            assert_type(self.env, pyobjects.Env)
            assert_type(self.ctx, pyobjects.ExecutionContext)
            return pyobjects.Response("ok")

    app = App(pyobjects.Worker(fetch, bindings={}), idle_timeout=None)
    App(pyobjects.Worker(Entry, bindings={}, vars={"A": 1}))
    async with app.running() as runtime:
        assert_type(runtime, pyobjects.Runtime)
        assert_type(app.runtime, pyobjects.Runtime)
    assert_type(app.max_body_size, int | None)


async def websocket_types(ctx: pyobjects.DurableObjectState) -> None:
    client, server = pyobjects.WebSocketPair()
    assert_type(client, pyobjects.WebSocket)
    assert_type(pyobjects.WebSocketPair()[1], pyobjects.WebSocket)
    ctx.accept_websocket(server, ["room"])
    assert_type(ctx.get_websockets(), list[pyobjects.WebSocket])
    assert_type(ctx.get_tags(server), list[str])
    assert_type(
        ctx.get_websocket_auto_response(),
        pyobjects.WebSocketRequestResponsePair | None,
    )
    assert_type(ctx.get_hibernatable_websocket_event_timeout(), int | None)
    assert_type(await client.receive(), str | bytes | pyobjects.WebSocketClose)
    async for message in client:
        assert_type(message, str | bytes)
    assert_type(server.ready_state, int)
    assert_type(server.deserialize_attachment(), Any)


async def response_types(response: pyobjects.Response) -> None:
    # Response.json is Cloudflare's static constructor on the class and the
    # body reader on an instance.
    assert_type(pyobjects.Response.json({"a": 1}, 201), pyobjects.Response)
    assert_type(await response.json(), Any)
    assert_type(pyobjects.Response.redirect("https://h/", 301), pyobjects.Response)
    assert_type(pyobjects.Response("x", 404, status_text="Nope").status_text, str)
    assert_type(await pyobjects.Request("https://h/").json(), Any)
