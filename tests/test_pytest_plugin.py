"""The pytest plugin's HTTP client fixtures, and its fixtures under pytest-asyncio."""

from __future__ import annotations

import contextlib
import textwrap
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from websockets.sync.client import connect

from pyobjects import DurableObject, Request, Response, WebSocketPair, Worker
from pyobjects.asgi import App
from pyobjects.testing._hosting import ContextHost

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request as StarletteRequest

    from pyobjects.testing import MakeClient, MakeServer, ManualClock

pytest_plugins = ("pytester",)


class Counter(DurableObject):
    async def fetch(self, request: Request) -> Response:
        if request.headers.get("upgrade") == "websocket":
            client, server = WebSocketPair()
            self.ctx.accept_websocket(server)
            return Response(status=101, websocket=client)
        if request.path == "/remind":
            await self.remind(5_000)
            return Response("ok")
        value = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", value)
        return Response(f"{value} {request.path}")

    async def websocket_message(self, ws: Any, message: str) -> None:
        ws.send(f"echo {message}")

    async def get(self) -> int:
        return await self.ctx.storage.get("n") or 0

    async def remind(self, ms: int) -> None:
        self.ctx.storage.set_alarm(self.ctx.now_ms() + ms)

    async def alarm(self) -> None:
        self.ctx.storage.put("n", -1)


async def fetch(request: Request, env: Any) -> Response:
    response: Response = await env.COUNTER.get_by_name("c").fetch(request)
    return response


WORKER = Worker(fetch, bindings={"COUNTER": Counter})


# -- make_client --------------------------------------------------------------


async def test_make_client_talks_to_a_worker_in_process(
    make_client: MakeClient,
) -> None:
    client = await make_client(WORKER)
    assert isinstance(client, httpx.AsyncClient)
    assert (await client.get("/a")).text == "1 /a"
    response = await client.post("/b", content=b"x")
    assert (response.status_code, response.text) == (200, "2 /b")
    assert str(response.request.url) == "http://testserver/b"


async def test_a_worker_runs_on_the_test_clock_and_storage(
    make_client: MakeClient, manual_clock: ManualClock, memory_backend: Any
) -> None:
    client = await make_client(WORKER)
    assert (await client.get("/remind")).text == "ok"
    assert len(await memory_backend.list_object_ids("COUNTER")) == 1
    await manual_clock.advance(5_000)  # the alarm sets n to -1
    assert (await client.get("/x")).text == "0 /x"


async def test_an_app_of_ones_own_is_reachable(
    make_client: MakeClient, manual_clock: ManualClock
) -> None:
    app = App(WORKER, clock=manual_clock)
    client = await make_client(app, base_url="https://example.com")
    response = await client.get("/")
    assert (response.text, str(response.url)) == ("1 /", "https://example.com/")
    counter = app.runtime.env.COUNTER.get_by_name("c")  # the lifespan started it
    await counter.remind(5_000)
    await manual_clock.advance(5_000)
    assert await counter.get() == -1


async def test_make_client_runs_a_host_apps_lifespan(make_client: MakeClient) -> None:
    objects = App(WORKER)
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def host_lifespan(host: Starlette) -> AsyncIterator[dict[str, str]]:
        async with objects.running():
            events.append("started")
            yield {"greeting": "hi"}
        events.append("stopped")

    async def total(request: StarletteRequest) -> PlainTextResponse:
        n = await objects.runtime.env.COUNTER.get_by_name("c").get()
        return PlainTextResponse(f"{request.state.greeting} {n}")

    host = Starlette(
        routes=[Route("/total", total), Mount("/objects", app=objects)],
        lifespan=host_lifespan,
    )
    client = await make_client(host)
    assert events == ["started"]
    assert (await client.get("/objects/hits")).text == "1 /hits"
    assert (await client.get("/total")).text == "hi 1"


async def test_make_client_refuses_app_options_with_an_app(
    make_client: MakeClient,
) -> None:
    with pytest.raises(TypeError, match="idle_timeout= are for the App"):
        await make_client(App(WORKER), idle_timeout=3)


async def test_make_client_serves_an_app_without_a_lifespan(
    make_client: MakeClient,
) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = await make_client(bare)
    assert (await client.get("/")).status_code == 204


async def test_make_client_reports_a_failed_startup(make_client: MakeClient) -> None:
    @contextlib.asynccontextmanager
    async def broken(host: Starlette) -> AsyncIterator[None]:
        raise LookupError("no database")
        yield  # type: ignore[unreachable]  # pragma: no cover

    with pytest.raises(RuntimeError, match="lifespan startup failed") as info:
        await make_client(Starlette(lifespan=broken))
    assert isinstance(info.value.__cause__, LookupError)


# -- make_server --------------------------------------------------------------


def test_make_server_serves_http_and_websockets(make_server: MakeServer) -> None:
    url = make_server(WORKER, idle_timeout=None)
    assert url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=url) as client:
        assert client.get("/x").text == "1 /x"
        assert client.get("/y").text == "2 /y"
    ws_url = "ws" + url.removeprefix("http") + "/chat"
    with connect(ws_url, open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "echo hello"


def test_make_server_serves_any_asgi_app(make_server: MakeServer) -> None:
    objects = App(WORKER)

    @contextlib.asynccontextmanager
    async def host_lifespan(host: Starlette) -> AsyncIterator[None]:
        async with objects.running():
            yield

    host = Starlette(routes=[Mount("/objects", app=objects)], lifespan=host_lifespan)
    url = make_server(host)
    assert httpx.get(f"{url}/objects/z").text == "1 /z"


def test_make_server_reports_a_failed_startup(make_server: MakeServer) -> None:
    @contextlib.asynccontextmanager
    async def broken(host: Starlette) -> AsyncIterator[None]:
        raise LookupError("no database")
        yield  # type: ignore[unreachable]  # pragma: no cover

    with pytest.raises(RuntimeError, match="uvicorn failed to start"):
        make_server(Starlette(lifespan=broken))


# -- ContextHost: setup and teardown in different tasks --------------------------


# pytest-asyncio, which splits fixtures across tasks, runs only asyncio.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_contexts_may_be_left_by_another_task() -> None:
    host = ContextHost()
    left: list[str] = []

    @contextlib.asynccontextmanager
    async def scoped() -> AsyncIterator[int]:
        async with anyio.create_task_group():  # a cancel scope, as in Runtime
            yield 7
        left.append("left")

    results: list[int] = []

    async def setup() -> None:
        results.append(await host.enter(scoped()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(setup)
    async with anyio.create_task_group() as tg:
        tg.start_soon(host.aclose)  # another task, as pytest-asyncio's teardown
    assert (results, left) == ([7], ["left"])


async def test_context_errors_reach_the_caller() -> None:
    host = ContextHost()

    @contextlib.asynccontextmanager
    async def failing_exit() -> AsyncIterator[None]:
        yield
        raise KeyError("on exit")

    @contextlib.asynccontextmanager
    async def failing_enter() -> AsyncIterator[None]:
        raise ValueError("on enter")
        yield  # type: ignore[unreachable]  # pragma: no cover

    with pytest.raises(ValueError, match="on enter"):
        await host.enter(failing_enter())
    await host.enter(failing_exit())
    with pytest.raises(KeyError, match="on exit"):
        await host.aclose()
    with pytest.raises(RuntimeError, match="torn down"):
        await host.enter(failing_exit())
    await host.aclose()  # again: nothing left to do


# -- coexisting with pytest-asyncio ------------------------------------------------


def test_fixtures_under_pytest_asyncio_auto_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        asyncio_mode = "auto"
        asyncio_default_fixture_loop_scope = "function"
        filterwarnings = ["error"]
        """
    )
    pytester.makepyfile(
        test_app=textwrap.dedent(
            """
            import socket

            import httpx
            import pytest
            from pyobjects import DurableObject, Request, Response, RuntimeClosedError
            from pyobjects import Worker
            from pyobjects.asgi import App

            class Counter(DurableObject):
                async def fetch(self, request: Request) -> Response:
                    n = (await self.ctx.storage.get("n") or 0) + 1
                    self.ctx.storage.put("n", n)
                    return Response(str(n))

                async def get(self) -> int:
                    return await self.ctx.storage.get("n") or 0

            async def fetch(request, env):
                return await env.COUNTER.get_by_name("c").fetch(request)

            WORKER = Worker(fetch, bindings={"COUNTER": Counter})

            async def test_runtime(make_runtime, manual_clock):
                rt = await make_runtime({"COUNTER": Counter})
                assert await rt.env.COUNTER.get_by_name("c").get() == 0
                await manual_clock.advance(60_000)

            async def test_client(make_client):
                client = await make_client(WORKER)
                assert (await client.get("/")).text == "1"

            async def test_fastapi_host(make_client):
                import contextlib
                from fastapi import FastAPI
                from pyobjects.asgi import App

                objects = App(WORKER)

                @contextlib.asynccontextmanager
                async def lifespan(api):
                    async with objects.running():
                        yield

                api = FastAPI(lifespan=lifespan)
                api.mount("/objects", objects)

                @api.get("/count")
                async def count():
                    return await objects.runtime.env.COUNTER.get_by_name("c").get()

                client = await make_client(api)
                assert (await client.get("/objects/x")).text == "1"
                assert (await client.get("/count")).json() == 1

            async def test_server(make_server):
                url = make_server(WORKER)
                async with httpx.AsyncClient(base_url=url) as client:
                    assert (await client.get("/")).text == "1"

            seen = {}

            async def test_start(make_client, make_server):
                seen["app"] = app = App(WORKER)
                await make_client(app)
                seen["url"] = make_server(WORKER)

            def test_teardown_stopped_them():
                with pytest.raises(RuntimeClosedError):
                    seen["app"].runtime
                port = int(seen["url"].rsplit(":", 1)[1])
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=5)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=6)
