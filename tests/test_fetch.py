"""Outgoing requests: ``pyobjects.fetch`` on httpx."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx
import pytest

import pyobjects
from pyobjects import DurableObject, FetchError, Request, Response, Runtime, Worker
from pyobjects.asgi import App
from pyobjects.storage import MemoryBackend

from .helpers import ControlledBackend
from .servers import ServerThread


def mock_client(seen: list[httpx.Request], **responses: httpx.Response) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.get(request.url.path.strip("/") or "root", httpx.Response(200))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_fetch_sends_the_request_and_builds_a_response() -> None:
    seen: list[httpx.Request] = []
    reply = httpx.Response(
        201,
        headers=[("x-a", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2")],
        json={"ok": True},
    )
    async with mock_client(seen, api=reply) as client:
        response = await pyobjects.fetch(
            "https://example.test/api",
            method="POST",
            headers={"X-Token": "t"},
            body='{"q": 1}',
            client=client,
        )
    assert (response.status, response.status_text) == (201, "Created")
    assert await response.json() == {"ok": True}
    assert response.headers.get_set_cookie() == ["a=1", "b=2"]
    assert "content-length" not in response.headers
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "https://example.test/api")
    assert request.headers["x-token"] == "t"
    assert request.content == b'{"q": 1}'


async def test_fetch_takes_a_request() -> None:
    seen: list[httpx.Request] = []
    async with mock_client(seen) as client:
        request = Request("https://example.test/", method="PUT", body=b"x")
        assert (await pyobjects.fetch(request, client=client)).ok
        with pytest.raises(TypeError, match="either a Request or a URL"):
            await pyobjects.fetch(request, method="GET", client=client)
    assert seen[0].method == "PUT"


async def test_redirect_modes() -> None:
    seen: list[httpx.Request] = []
    moved = httpx.Response(302, headers={"location": "https://example.test/there"})
    there = httpx.Response(200, text="arrived")
    async with mock_client(seen, here=moved, there=there) as client:
        followed = await pyobjects.fetch("https://example.test/here", client=client)
        assert await followed.text() == "arrived"
        manual = await pyobjects.fetch(
            "https://example.test/here", redirect="manual", client=client
        )
        assert manual.status == 302
        assert manual.headers["location"] == "https://example.test/there"
        with pytest.raises(FetchError, match="302 redirect and redirect='error'"):
            await pyobjects.fetch(
                "https://example.test/here", redirect="error", client=client
            )
        with pytest.raises(ValueError, match="redirect must be"):
            await pyobjects.fetch(
                "https://example.test/",
                redirect="sometimes",  # type: ignore[arg-type]
                client=client,
            )


async def test_a_redirect_loop_is_a_fetch_error() -> None:
    seen: list[httpx.Request] = []
    loop = httpx.Response(307, headers={"location": "https://example.test/loop"})
    async with mock_client(seen, loop=loop) as client:
        with pytest.raises(FetchError, match="Exceeded maximum allowed redirects"):
            await pyobjects.fetch("https://example.test/loop", client=client)
    assert len(seen) == 21  # the request and the 20 redirects httpx follows


async def test_a_refused_connection_is_a_fetch_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(FetchError) as info:
            await pyobjects.fetch("https://example.test/x", client=client)
    assert str(info.value) == (
        "fetch GET https://example.test/x failed: connection refused"
    )
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


class Notifier(DurableObject):
    client: Any = None

    async def record_then_notify(self) -> int:
        self.ctx.storage.put("sent", True)
        response = await pyobjects.fetch("https://hooks.test/", client=self.client)
        return response.status


async def test_a_fetch_from_an_object_waits_for_its_writes() -> None:
    # workerd holds outgoing subrequests at the output gate: the hook must
    # not hear of a write that is not durable yet.
    seen: list[httpx.Request] = []
    controlled = ControlledBackend(MemoryBackend())
    controlled.hold = anyio.Event()
    async with mock_client(seen) as client:
        Notifier.client = client
        async with Runtime(bindings={"N": Notifier}, storage=controlled) as rt:
            stub = rt.env.N.get_by_name("n")
            statuses: list[int] = []

            async def call() -> None:
                statuses.append(await stub.record_then_notify())

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await anyio.wait_all_tasks_blocked()
                assert len(controlled.commits) == 1
                assert seen == []  # held: the write is not durable
                controlled.hold.set()
            assert statuses == [200]
            assert len(seen) == 1


async def test_fetch_over_a_real_connection() -> None:
    async def fetch(request: Request, env: Any) -> Response:
        return Response(f"{request.method} {request.path}", 418, status_text="Tea")

    server = ServerThread(App(Worker(fetch, bindings={})))
    base = server.start()
    try:
        response = await pyobjects.fetch(base + "/pot", method="DELETE")
    finally:
        server.stop()
    assert response.status == 418
    assert await response.text() == "DELETE /pot"


async def test_fetch_without_httpx_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'pyobjects\[fetch\]'"):
        await pyobjects.fetch("https://example.test/")
