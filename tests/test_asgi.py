"""pyobjects.asgi.App over HTTP and lifespan, driven in process (asyncio and trio)."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pyobjects import DurableObject, Request, Response, RuntimeClosedError, Worker
from pyobjects.asgi import App
from pyobjects.storage import MemoryBackend, SQLiteBackend

from .asgi_driver import http, lifespan
from .fake_websocket import upgrade as fake_upgrade

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, MutableMapping
    from pathlib import Path

    from starlette.requests import Request as StarletteRequest


class Counter(DurableObject):
    async def fetch(self, request: Request) -> Response:
        value = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", value)
        return Response(str(value))

    async def get(self) -> int:
        return await self.ctx.storage.get("n") or 0


async def echo(request: Request, env: Any) -> Response:
    if request.path.endswith("/count"):  # also when mounted under a prefix
        response: Response = await env.COUNTER.get_by_name("c").fetch(request)
        return response
    headers = [("x-method", request.method), ("x-url", request.url)]
    headers += [("x-got-" + k, v) for k, v in request.headers.items() if k != "host"]
    headers += [("set-cookie", "a=1"), ("set-cookie", "b=2")]
    return Response(await request.bytes(), status=201, headers=headers)


def make_app(**options: Any) -> App:
    return App(Worker(echo, bindings={"COUNTER": Counter}), **options)


async def test_request_and_response_cross_the_asgi_boundary() -> None:
    app = make_app()
    async with lifespan(app) as sent:
        assert sent == [{"type": "lifespan.startup.complete"}]
        result = await http(
            app,
            "POST",
            "/a b/c",
            query=b"x=1&y=%20",
            raw_path=b"/a%20b/c",
            headers=[("Host", "example.test:8443"), ("X-Thing", "v")],
            scheme="https",
            chunks=[b"hel", b"lo ", b"world"],
        )
    assert result.status == 201
    assert result.body == b"hello world"
    assert result.header("x-method") == "POST"
    assert result.header("x-url") == "https://example.test:8443/a%20b/c?x=1&y=%20"
    assert result.header("x-got-x-thing") == "v"
    assert result.header("content-length") == "11"
    cookies = [v for k, v in result.headers if k == b"set-cookie"]
    assert cookies == [b"a=1", b"b=2"]
    assert sent[-1] == {"type": "lifespan.shutdown.complete"}


async def test_url_falls_back_to_the_server_address_and_path() -> None:
    app = make_app()
    async with lifespan(app):
        v4 = await http(app, path="/é", headers=[], server=("10.0.0.1", 80))
        v6 = await http(app, path="/", headers=[], server=("::1", 8787))
        unix = await http(app, path="/", headers=[], server=None)
    assert v4.header("x-url") == "http://10.0.0.1:80/%C3%A9"
    assert v6.header("x-url") == "http://[::1]:8787/"
    assert unix.header("x-url") == "http://localhost/"


async def test_counter_through_http_keeps_state() -> None:
    app = make_app()
    async with lifespan(app):
        bodies = [(await http(app, path="/count")).body for _ in range(3)]
        assert bodies == [b"1", b"2", b"3"]
        assert await app.runtime.env.COUNTER.get_by_name("c").get() == 3


async def test_shutdown_flushes_writes_and_restart_keeps_data(tmp_path: Path) -> None:
    storage = SQLiteBackend(tmp_path / "data")
    app = make_app(storage=storage)
    async with lifespan(app):
        assert (await http(app, path="/count")).body == b"1"
    # A new App (a new process, in effect) sees the committed write.
    again = make_app(storage=SQLiteBackend(tmp_path / "data"))
    async with lifespan(again):
        assert (await http(again, path="/count")).body == b"2"
    # The same App can be started again after a stop.
    async with lifespan(again):
        assert (await http(again, path="/count")).body == b"3"


async def test_worker_errors_are_a_generic_500_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fetch(request: Request, env: Any) -> Response:
        if request.path == "/not-a-response":
            return "text"  # type: ignore[return-value]
        if request.path == "/latin1":
            return Response("x", headers={"x-bad": "ŝ"})
        raise RuntimeError("secret database password")

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        with caplog.at_level(logging.ERROR, logger="pyobjects.asgi"):
            result = await http(app, path="/boom")
            wrong = await http(app, path="/not-a-response")
            latin1 = await http(app, path="/latin1")
    assert result.status == 500
    assert result.body == b"Internal Server Error\n"
    assert b"secret" not in result.body
    assert "secret database password" in caplog.text
    assert "the worker failed on GET http://example.test/boom" in caplog.text
    assert wrong.status == 500
    assert "must return a pyobjects.Response, not str" in caplog.text
    assert latin1.status == 500


async def test_debug_puts_the_traceback_in_the_500() -> None:
    async def fetch(request: Request, env: Any) -> Response:
        raise RuntimeError("visible in debug")

    app = App(Worker(fetch, bindings={}), debug=True)
    async with lifespan(app):
        result = await http(app)
    assert result.status == 500
    assert b"Traceback" in result.body
    assert b"RuntimeError: visible in debug" in result.body


async def test_body_over_the_declared_limit_is_refused_unread() -> None:
    app = make_app(max_body_size=10)
    async with lifespan(app):
        result = await http(
            app,
            "POST",
            headers=[("host", "h"), ("content-length", "11")],
            chunks=[b"x" * 11],
        )
    assert result.status == 413
    assert result.header("connection") == "close"
    assert b"limited to 10 bytes" in result.body
    assert result.receives == 0  # not one chunk was read


async def test_streamed_body_stops_being_read_at_the_limit() -> None:
    app = make_app(max_body_size=10)
    async with lifespan(app):
        at_limit = await http(app, "POST", chunks=[b"12345", b"67890"])
        over = await http(app, "POST", chunks=[b"123456", b"7890A", b"never", b"read"])
    assert (at_limit.status, at_limit.body) == (201, b"1234567890")
    assert over.status == 413
    assert over.receives == 2  # stopped at the chunk that crossed the limit


async def test_no_limit_and_defaults() -> None:
    assert make_app().max_body_size == 100 * 1024 * 1024  # Cloudflare Free/Pro
    assert make_app().max_message_size == 32 * 1024 * 1024  # Cloudflare
    app = make_app(max_body_size=None)
    async with lifespan(app):
        result = await http(app, "PUT", chunks=[b"x" * 100_000] * 3)
    assert result.status == 201
    assert len(result.body) == 300_000
    with pytest.raises(ValueError, match="max_body_size"):
        make_app(max_body_size=-1)
    with pytest.raises(ValueError, match="max_message_size"):
        make_app(max_message_size=0)


async def test_client_disconnect_mid_body_calls_nothing() -> None:
    calls: list[str] = []

    async def fetch(request: Request, env: Any) -> Response:
        calls.append(request.path)
        return Response("ok")

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        gone = await http(app, "POST", chunks=[b"part"], disconnect=True)
        after = await http(app, path="/after")
    assert gone.messages == []  # nothing was sent back
    assert calls == ["/after"]
    assert after.status == 200


async def test_a_send_that_fails_because_the_client_left_is_quiet() -> None:
    app = make_app()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        raise OSError("client disconnected")

    async with lifespan(app):
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/count",
            "headers": [(b"host", b"h")],
        }
        await app(scope, receive, send)
        # The write of that request still happened, whole.
        assert await app.runtime.env.COUNTER.get_by_name("c").get() == 1


@pytest.mark.parametrize(
    ("method", "headers", "chunks", "match"),
    [
        ("GET", [("host", "bad host/x")], [b""], b"invalid Host header"),
        ("POST", [("host", "h"), ("content-length", "ten")], [b""], b"Content-Length"),
        (
            "POST",
            [("host", "h"), ("content-length", "1, 1")],
            [b"x"],
            b"Content-Length",
        ),
        ("GET", [("host", "h")], [b"body"], b"GET request cannot have a body"),
        ("M-SEARCH", [("host", "h")], [b""], b"invalid HTTP method"),
        ("GET", [("host", "h"), ("bad name", "v")], [b""], b"invalid header"),
    ],
)
async def test_malformed_requests_get_400(
    method: str, headers: list[tuple[str, str]], chunks: list[bytes], match: bytes
) -> None:
    app = make_app()
    async with lifespan(app):
        result = await http(app, method, headers=headers, chunks=chunks)
        ok = await http(app, path="/count")
    assert result.status == 400
    assert match in result.body
    assert ok.status == 200  # and the app keeps serving


async def test_relative_raw_path_is_refused() -> None:
    app = make_app()
    async with lifespan(app):
        result = await http(app, raw_path=b"*")
    assert result.status == 400


async def test_head_and_no_body_statuses() -> None:
    async def fetch(request: Request, env: Any) -> Response:
        if request.path == "/empty":
            return Response("ignored", status=204, headers={"content-length": "7"})
        if request.path == "/declared":
            return Response(headers={"content-length": "42"})
        return Response("twelve bytes")

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        head = await http(app, "HEAD")
        declared = await http(app, "HEAD", "/declared")
        empty = await http(app, path="/empty")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "12")
    assert declared.header("content-length") == "42"
    assert (empty.status, empty.body, empty.header("content-length")) == (
        204,
        b"",
        None,
    )


async def test_requests_outside_the_lifespan_get_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    before = await http(app, path="/count")
    assert before.status == 503
    assert b"app.running()" in before.body
    assert "not running" in caplog.text
    with pytest.raises(RuntimeClosedError):
        _ = app.runtime
    async with lifespan(app):
        assert (await http(app, path="/count")).status == 200
    assert (await http(app, path="/count")).status == 503
    assert "stopped" in repr(app)


async def test_running_is_exclusive_and_yields_the_runtime() -> None:
    app = make_app()
    async with app.running() as runtime:
        assert app.runtime is runtime
        assert "running" in repr(app)
        with pytest.raises(RuntimeError, match="already running"):
            async with app.running():
                pass  # pragma: no cover
    with pytest.raises(RuntimeClosedError):
        _ = app.runtime


async def test_lifespan_reports_startup_failure() -> None:
    class BrokenBackend(MemoryBackend):  # type: ignore[misc]
        async def pending_alarms(self) -> list[Any]:
            raise OSError("disk on fire")

    app = make_app(storage=BrokenBackend())
    async with lifespan(app) as sent:
        pass
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "disk on fire" in sent[0]["message"]


async def test_runtime_options_are_passed_and_checked() -> None:
    app = make_app(idle_timeout=None)
    async with app.running() as runtime:
        assert runtime._options["idle_timeout"] is None
    with pytest.raises(ValueError, match="idle_timeout"):
        make_app(idle_timeout=-1)
    with pytest.raises(TypeError):
        make_app(no_such_option=1)


async def test_unknown_scope_type_is_an_error() -> None:
    app = make_app()

    async def receive() -> dict[str, Any]:
        raise AssertionError  # pragma: no cover

    async def send(message: MutableMapping[str, Any]) -> None:
        raise AssertionError  # pragma: no cover

    with pytest.raises(ValueError, match="unsupported ASGI scope type"):
        await app({"type": "webtransport"}, receive, send)


async def test_websocket_response_to_plain_http() -> None:
    released: list[str] = []

    class Socket:
        def _disconnect(self) -> None:
            released.append("disconnect")

    async def fetch(request: Request, env: Any) -> Response:
        return fake_upgrade(Socket())

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        plain = await http(app)
        # An upgrade the server did not treat as a WebSocket handshake.
        upgrade = await http(app, headers=[("host", "h"), ("upgrade", "websocket")])
    assert plain.status == 500
    assert upgrade.status == 400
    assert b"malformed WebSocket upgrade" in upgrade.body
    assert released == ["disconnect", "disconnect"]


# -- mounted in Starlette ---------------------------------------------------------


def make_host(app: App) -> Starlette:
    @contextlib.asynccontextmanager
    async def host_lifespan(host: Starlette) -> AsyncIterator[None]:
        async with app.running():
            yield

    async def total(request: StarletteRequest) -> PlainTextResponse:
        # The host app reaches the objects directly through app.runtime.
        n = await app.runtime.env.COUNTER.get_by_name("c").get()
        return PlainTextResponse(f"total {n}")

    return Starlette(
        routes=[Route("/total", total), Mount("/do", app=app)],
        lifespan=host_lifespan,
    )


async def test_mounted_in_starlette_with_the_host_lifespan() -> None:
    app = make_app()
    host = make_host(app)
    async with lifespan(host):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = await c.get("/do/count")
            second = await c.post("/do/echo?q=1", content=b"posted")
            total = await c.get("/total")
    assert first.text == "1"
    assert second.status_code == 201
    assert second.text == "posted"
    # The worker sees URLs below the mount point, and the prefix in a header.
    assert second.headers["x-url"] == "http://t/echo?q=1"
    assert second.headers["x-got-x-forwarded-prefix"] == "/do"
    assert total.text == "total 1"


@pytest.mark.parametrize(
    ("root_path", "path", "raw_path", "url"),
    [
        # Starlette's Mount: path and raw_path both keep the prefix.
        ("/do", "/do/a b", b"/do/a%20b", "http://h/a%20b"),
        ("/do/", "/do", b"/do", "http://h/"),
        # uvicorn --root-path behind a proxy that stripped the prefix.
        ("/api", "/api/x", b"/x", "http://h/x"),
        # The prefix escaped differently in the raw path: the decoded path.
        ("/é", "/é/x", b"/%c3%a9/x", "http://h/x"),
        # A path outside the prefix is left whole.
        ("/do", "/other", b"/other", "http://h/other"),
    ],
)
async def test_the_worker_sees_paths_below_the_root_path(
    root_path: str, path: str, raw_path: bytes, url: str
) -> None:
    app = make_app()
    async with lifespan(app):
        scope_headers = [("host", "h"), ("x-forwarded-prefix", "/spoofed")]
        result = await http(
            app,
            path=path,
            raw_path=raw_path,
            headers=scope_headers,
            root_path=root_path,
        )
    assert result.header("x-url") == url
    assert result.header("x-got-x-forwarded-prefix") == root_path.rstrip("/")


async def test_without_a_root_path_headers_pass_through() -> None:
    app = make_app()
    async with lifespan(app):
        result = await http(app, headers=[("host", "h"), ("x-forwarded-prefix", "/p")])
    assert result.header("x-got-x-forwarded-prefix") == "/p"


async def test_mounted_without_starting_the_runtime_is_503() -> None:
    app = make_app()
    host = Starlette(routes=[Mount("/do", app=app)])
    async with lifespan(host):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            response = await c.get("/do/count")
    assert response.status_code == 503


async def test_concurrent_requests_are_all_answered() -> None:
    app = make_app()
    results: list[int] = []
    async with lifespan(app):

        async def one() -> None:
            results.append((await http(app, path="/count")).status)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        assert await app.runtime.env.COUNTER.get_by_name("c").get() == 50
    assert results == [200] * 50
