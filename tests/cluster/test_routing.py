"""Two nodes in one process on one PostgreSQL schema: routing and forwarding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import pytest

import pyobjects
from pyobjects import DurableObject, LeaseHeldError, Node, Request, Response, Runtime
from pyobjects._core._cluster import _Gone
from pyobjects.storage import PostgresBackend

if TYPE_CHECKING:
    from collections.abc import Callable


class Counter(DurableObject):
    async def incr(self, by: int = 1) -> dict[str, Any]:
        n = (await self.ctx.storage.get("n") or 0) + by
        self.ctx.storage.put("n", n)
        return {"n": n, "node": self.env.NODE, "name": self.ctx.id.name}

    async def boom(self) -> None:
        raise KeyError("no such thing")

    async def relay(self, other: Any) -> Any:
        """Call the object *other* (a stub that may come from another node)."""
        return await other.incr(10)

    async def whoami(self) -> Any:
        return self.ctx.id

    async def fetch(self, request: Request) -> Response:
        n = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", n)
        body = await request.text()
        return Response(
            f"{n} {self.env.NODE} {request.method} {body}",
            status=201,
            headers={"x-node": self.env.NODE},
        )


def node(
    dsn: str,
    schema: str,
    name: str,
    *,
    bindings: dict[str, type[DurableObject]] | None = None,
    **options: Any,
) -> Runtime:
    return Runtime(
        bindings={"C": Counter} if bindings is None else bindings,
        storage=PostgresBackend(dsn, schema=schema, lease_ttl=2),
        vars={"NODE": name},
        node=Node(),
        **options,
    )


async def test_a_call_on_any_node_reaches_the_one_instance(
    database: tuple[str, str],
) -> None:
    dsn, name = database
    async with node(dsn, name, "a") as a, node(dsn, name, "b") as b:
        first = await a.env.C.get_by_name("x").incr()
        home = first["node"]  # placed by rendezvous hashing
        assert first == {"n": 1, "node": home, "name": "x"}
        # Whichever node is asked, the call reaches the one instance.
        second = await b.env.C.get_by_name("x").incr(2)
        assert second == {"n": 3, "node": home, "name": "x"}
        assert (await a.env.C.get_by_name("x").incr(0))["node"] == home
        # Errors keep their type across nodes.
        with pytest.raises(KeyError, match="no such thing"):
            await b.env.C.get_by_name("x").boom()
        # fetch() is forwarded too, with method, headers and body.
        response = await b.env.C.get_by_name("x").fetch(
            "https://do/", method="POST", body="hello"
        )
        assert response.status == 201
        assert response.headers.get("x-node") == home
        assert await response.text() == f"4 {home} POST hello"


async def test_when_the_holder_leaves_another_node_takes_over(
    database: tuple[str, str],
) -> None:
    dsn, name = database
    async with node(dsn, name, "b") as b:
        async with node(dsn, name, "a") as a:
            # x is first called on a; a name that hashes to a (a holds it).
            name = next(
                f"x{i}"
                for i in range(1000)
                if a._cluster is not None
                and a._cluster._placement(("C", str(a.env.C.id_from_name(f"x{i}"))))
                is None
            )
            assert (await a.env.C.get_by_name(name).incr())["node"] == "a"
            assert (await b.env.C.get_by_name(name).incr())["node"] == "a"
        # a stopped (gracefully: its leases given back); b runs it now.
        result = await b.env.C.get_by_name(name).incr()
        assert result == {"n": 3, "node": "b", "name": name}


async def test_a_call_waits_while_the_holder_is_leaving(
    database: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder that stopped taking calls gives its leases back a bit later.

    Calls made meanwhile on another node wait for that (up to a TTL) instead
    of failing after a few tries: a graceful stop costs callers nothing.
    """
    dsn, name = database
    result: dict[str, Any] = {}
    async with node(dsn, name, "b") as b, anyio.create_task_group() as tg:
        async with node(dsn, name, "a") as a:
            assert a._cluster is not None
            assert b._cluster is not None
            name = next(
                f"x{i}"
                for i in range(1000)
                if a._cluster._placement(("C", str(a.env.C.id_from_name(f"x{i}"))))
                is None
            )
            assert (await a.env.C.get_by_name(name).incr())["node"] == "a"
            gone = 0
            seen = anyio.Event()  # more "gone" answers than tries per call
            send = b._cluster._send

            async def counting(url: str, path: str, message: dict[str, Any]) -> Any:
                nonlocal gone
                try:
                    return await send(url, path, message)
                except _Gone:
                    gone += 1
                    if gone == 4:
                        seen.set()
                    raise

            monkeypatch.setattr(b._cluster, "_send", counting)
            a._cluster._leaving = True  # what stop() does first

            async def call() -> None:
                result.update(await b.env.C.get_by_name(name).incr())

            tg.start_soon(call)
            with anyio.fail_after(10):
                await seen.wait()
        # a stopped: its lease is given back, and the waiting call runs on b.
    assert result == {"n": 2, "node": "b", "name": name}


async def test_a_runtime_without_a_node_is_refused_by_a_held_object(
    database: tuple[str, str],
) -> None:
    dsn, name = database
    async with node(dsn, name, "a") as a:
        await a.env.C.get_by_name("x").incr()
        plain = Runtime(
            bindings={"C": Counter},
            storage=PostgresBackend(dsn, schema=name),
            vars={"NODE": "plain"},
        )
        async with plain:
            with pytest.raises(LeaseHeldError):
                await plain.env.C.get_by_name("x").incr()


def test_a_node_needs_shared_storage() -> None:
    with pytest.raises(TypeError, match="PostgresBackend"):
        Runtime(bindings={"C": Counter}, node=pyobjects.Node())


async def test_objects_spread_over_the_nodes(database: tuple[str, str]) -> None:
    dsn, name = database
    async with node(dsn, name, "a") as a, node(dsn, name, "b") as b:
        for _ in range(500):  # both see both (membership refreshes in rounds)
            if all(rt._cluster and len(rt._cluster._members) == 2 for rt in (a, b)):
                break
            await anyio.sleep(0.01)
        homes = [(await a.env.C.get_by_name(f"o{i}").incr())["node"] for i in range(20)]
        assert set(homes) == {"a", "b"}  # rendezvous hashing places them
        again = [(await b.env.C.get_by_name(f"o{i}").incr())["node"] for i in range(20)]
        assert again == homes


class Room(DurableObject):
    """Hibernatable sockets: every message is echoed with the node's name."""

    built: ClassVar[list[str]] = []

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        Room.built.append(env.NODE)

    async def fetch(self, request: Request) -> Response:
        pair = pyobjects.WebSocketPair()
        client, server = pair[0], pair[1]
        self.ctx.accept_websocket(server)
        return Response(None, status=101, websocket=client)

    async def webSocketMessage(self, ws: Any, message: Any) -> None:
        count = (await self.ctx.storage.get("count") or 0) + 1
        self.ctx.storage.put("count", count)
        ws.send(f"{self.env.NODE}:{count}:{message}")


async def test_a_websocket_on_any_node_reaches_the_object(
    database: tuple[str, str], serve: Callable[..., str]
) -> None:
    from websockets.asyncio.client import connect

    from pyobjects.asgi import App

    dsn, name = database
    Room.built = []

    async def route(request: Request, env: Any) -> Response:
        response: Response = await env.ROOM.get_by_name("r").fetch(request)
        return response

    urls = [
        serve(
            App(
                pyobjects.Worker(
                    route, bindings={"ROOM": Room}, vars={"NODE": node_name}
                ),
                storage=PostgresBackend(dsn, schema=name, lease_ttl=2),
                node=Node(),
                idle_timeout=0.3,
            )
        )
        for node_name in ("a", "b")
    ]
    async with connect(urls[0].replace("http", "ws") + "/") as one:
        await one.send("hello")
        home = str(await one.recv()).split(":")[0]
        async with connect(urls[1].replace("http", "ws") + "/") as two:
            await two.send("there")
            # Both sockets reach the one instance, on its node.
            assert await two.recv() == f"{home}:2:there"
            # Idle, the object hibernates on its node; the sockets stay open
            # (across the nodes too) and the next message wakes it.
            await anyio.sleep(1.0)
            await one.send("again")
            assert await one.recv() == f"{home}:3:again"
            await two.send("bye")
            assert await two.recv() == f"{home}:4:bye"
    assert Room.built == [home, home]  # built, hibernated, built again


async def test_traces_follow_a_call_to_another_node(database: tuple[str, str]) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    dsn, name = database
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = pyobjects.OpenTelemetry(tracer_provider=provider)

    def traced(node_name: str) -> Runtime:
        return node(dsn, name, node_name, opentelemetry=telemetry)

    async with traced("a") as a, traced("b") as b:
        home = (await a.env.C.get_by_name("t").incr())["node"]
        caller = b if home == "a" else a  # the node that forwards
        spans.clear()
        with provider.get_tracer("test").start_as_current_span("request") as outer:
            assert (await caller.env.C.get_by_name("t").incr())["node"] == home
    # (The forwarding node may first have tried to start the object itself,
    # if it had not seen the other node yet: that attempt has a span too.)
    (remote,) = [
        s
        for s in spans.get_finished_spans()
        if s.name == "Counter/incr" and s.parent is not None and s.parent.is_remote
    ]
    # The span on the holder belongs to the caller's trace, under its span.
    assert remote.context.trace_id == outer.get_span_context().trace_id
    assert remote.parent is not None
    assert remote.parent.span_id == outer.get_span_context().span_id


async def test_ids_and_stubs_cross_nodes(database: tuple[str, str]) -> None:
    dsn, name = database
    async with node(dsn, name, "a") as a, node(dsn, name, "b") as b:
        for rt in (a, b):  # place objects on both nodes
            for i in range(6):
                await rt.env.C.get_by_name(f"s{i}").incr(0)
        for caller in (a, b):
            for i in range(6):
                stub = caller.env.C.get_by_name(f"s{i}")
                got = await stub.whoami()
                assert got == caller.env.C.id_from_name(f"s{i}")
                assert got.name == f"s{i}"
                # A stub as an argument: the object calls it from its node.
                target = caller.env.C.get_by_name("target")
                result = await stub.relay(target)
                assert result["name"] == "target"
        final = await a.env.C.get_by_name("target").incr(0)
        assert final["n"] == 120  # 12 relays of 10, each once


class Slow(DurableObject):
    release: ClassVar[anyio.Event]
    running: ClassVar[anyio.Event]

    async def wait(self) -> str:
        type(self).running.set()
        await type(self).release.wait()
        return str(self.env.NODE)


async def test_a_membership_answer_older_than_a_call_does_not_cancel_it(
    database: tuple[str, str],
) -> None:
    # The watcher gives up on calls to nodes missing from the live list. A
    # list asked for before a call started may predate the node the call
    # goes to (it joined meanwhile): such a call must go on.
    dsn, name = database
    Slow.release, Slow.running = anyio.Event(), anyio.Event()

    def slow_node(label: str) -> Runtime:
        return node(dsn, name, label, bindings={"S": Slow})

    async with slow_node("a") as a, slow_node("b") as b:
        Slow.release.set()
        held_by = await a.env.S.get_by_name("x").wait()  # placed by hashing
        caller, holder = (a, b) if held_by == "b" else (b, a)
        cluster = caller._cluster
        assert cluster is not None
        assert holder._cluster is not None
        holder_url = holder._cluster.url
        Slow.release, Slow.running = anyio.Event(), anyio.Event()
        backend: Any = cluster._backend
        real = backend.live_nodes
        asked, answer = anyio.Event(), anyio.Event()

        async def stale_live_nodes() -> list[str]:
            current = await real()
            asked.set()
            await answer.wait()
            return [url for url in current if url != holder_url]

        backend.live_nodes = stale_live_nodes
        try:
            with anyio.fail_after(10):
                await asked.wait()  # the watcher's question is out
                async with anyio.create_task_group() as tg:
                    results: list[str] = []

                    async def call() -> None:
                        results.append(await caller.env.S.get_by_name("x").wait())

                    tg.start_soon(call)
                    await Slow.running.wait()  # forwarded to the holder, running
                    assert holder_url in cluster._calls  # in flight from caller
                    answer.set()  # the old answer arrives: the holder is missing
                    await anyio.sleep(0.2)
                    Slow.release.set()
            assert results == [held_by]
        finally:
            backend.live_nodes = real
