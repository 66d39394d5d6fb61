"""pyobjects.Worker, WorkerEntrypoint and ExecutionContext."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    ExecutionContext,
    Request,
    Response,
    Worker,
    WorkerEntrypoint,
)
from pyobjects.asgi import App

from .asgi_driver import http, lifespan


class Counter(DurableObject):
    async def fetch(self, request: Request) -> Response:
        value = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", value)
        return Response(str(value))


async def two_args(request: Request, env: Any) -> Response:
    response: Response = await env.COUNTER.get_by_name("c").fetch(request)
    return response


async def test_function_worker_gets_env_and_vars() -> None:
    async def fetch(request: Request, env: Any) -> Response:
        return Response(f"{env.GREETING} {request.method} {request.path}")

    worker = Worker(fetch, bindings={"COUNTER": Counter}, vars={"GREETING": "hi"})
    assert worker.vars == {"GREETING": "hi"}
    assert set(worker.bindings) == {"COUNTER"}
    assert repr(worker).startswith("<Worker ")
    app = App(worker)
    async with lifespan(app):
        result = await http(app, "GET", "/x")
    assert (result.status, result.body) == (200, b"hi GET /x")


async def test_function_worker_with_ctx_runs_wait_until_after_the_response() -> None:
    done = anyio.Event()
    seen: list[str] = []

    async def later(env: Any) -> None:
        await env.COUNTER.get_by_name("bg").fetch("https://x/")
        seen.append("background")
        done.set()

    async def fetch(request: Request, env: Any, ctx: ExecutionContext) -> Response:
        ctx.wait_until(later(env))
        ctx.pass_through_on_exception()
        return Response("now")

    app = App(Worker(fetch, bindings={"COUNTER": Counter}))
    async with lifespan(app):
        result = await http(app)
        assert result.body == b"now"
        await done.wait()
    assert seen == ["background"]


async def test_shutdown_waits_for_wait_until_work() -> None:
    release = anyio.Event()
    finished: list[bool] = []

    async def slow() -> None:
        await release.wait()
        finished.append(True)

    async def fetch(request: Request, env: Any, ctx: ExecutionContext) -> Response:
        ctx.waitUntil(slow())  # type: ignore[attr-defined]  # camelCase alias
        return Response("ok")

    app = App(Worker(fetch, bindings={}))
    async with anyio.create_task_group() as tg:
        async with lifespan(app):
            await http(app)
            tg.start_soon(_set_when_blocked, release)
        # Leaving the lifespan returned only after slow() finished.
        assert finished == [True]


async def _set_when_blocked(event: anyio.Event) -> None:
    await anyio.wait_all_tasks_blocked()
    event.set()


async def test_wait_until_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def failing() -> None:
        raise ValueError("background boom")

    async def fetch(request: Request, env: Any, ctx: ExecutionContext) -> Response:
        ctx.wait_until(failing())
        return Response("ok")

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        assert (await http(app)).status == 200
    assert "wait_until() task of the worker failed" in caplog.text
    with pytest.raises(TypeError, match="takes an awaitable"):
        ExecutionContext(lambda aw: None).wait_until(5)  # type: ignore[arg-type]


async def test_entrypoint_class_gets_a_fresh_instance_per_request() -> None:
    instances: list[int] = []

    class Entry(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            instances.append(id(self))
            assert isinstance(self.ctx, ExecutionContext)
            response: Response = await self.env.COUNTER.get_by_name("c").fetch(request)
            return response

    app = App(Worker(Entry, bindings={"COUNTER": Counter}))
    async with lifespan(app):
        first = await http(app)
        second = await http(app)
    assert (first.body, second.body) == (b"1", b"2")
    assert len(instances) == 2


def test_bad_workers_are_rejected() -> None:
    class NotAnEntrypoint:
        async def fetch(self, request: Request) -> Response:
            return Response()

    class Empty(WorkerEntrypoint):
        pass

    with pytest.raises(TypeError, match="WorkerEntrypoint subclass"):
        Worker(NotAnEntrypoint, bindings={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="does not define fetch"):
        Worker(Empty, bindings={})
    with pytest.raises(TypeError, match="not int"):
        Worker(5, bindings={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bindings must be a mapping"):
        Worker(two_args, bindings=[Counter])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"App\(\) takes a pyobjects\.Worker"):
        App(two_args)  # type: ignore[arg-type]
    # Bindings are checked when the App is built, not at the first request.
    with pytest.raises(TypeError, match="DurableObject subclass"):
        App(Worker(two_args, bindings={"X": int}))  # type: ignore[dict-item]


async def test_entrypoint_base_fetch_is_not_implemented() -> None:
    entry = WorkerEntrypoint(ExecutionContext(lambda aw: None), None)
    with pytest.raises(NotImplementedError):
        await entry.fetch(Request("https://x/"))


def test_worker_names_are_exported() -> None:
    for name in ("Worker", "WorkerEntrypoint", "ExecutionContext"):
        assert getattr(pyobjects, name).__module__ == "pyobjects"


async def test_wait_until_after_the_runtime_stopped_is_refused() -> None:
    kept: list[ExecutionContext] = []

    async def fetch(request: Request, env: Any, ctx: ExecutionContext) -> Response:
        kept.append(ctx)
        return Response("ok")

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        await http(app)

    async def never() -> None:
        raise AssertionError  # pragma: no cover

    with pytest.raises(pyobjects.RuntimeClosedError):
        kept[0].wait_until(never())  # closed without a "never awaited" warning


async def test_a_forgotten_await_is_named_in_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def inner() -> Response:
        return Response("x")  # pragma: no cover - closed, never run

    async def fetch(request: Request, env: Any) -> Any:
        return inner()  # the await is missing

    app = App(Worker(fetch, bindings={}))
    async with lifespan(app):
        result = await http(app)
    assert result.status == 500
    assert "not coroutine (an awaitable: is an `await` missing?)" in caplog.text
