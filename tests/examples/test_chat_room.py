"""examples/chat_room: rooms over hibernatable WebSockets.

In process (asyncio and trio) through the worker's ``fetch`` and the client
ends of the sockets, with a ManualClock for exact hibernation; then over real
WebSockets under uvicorn with the ``websockets`` client.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import httpx
import pytest
from examples.chat_room import app as chat_app
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pyobjects import (
    DurableObjectState,
    Env,
    Request,
    Runtime,
    WebSocket,
    WebSocketClose,
    Worker,
)
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import ManualClock

from .support import ClockedApp, Serve

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

IDLE_MS = 10_000  # the Runtime's default idle timeout


class CountedRoom(chat_app.ChatRoom):
    """The example's room, counting its instances (each wake-up builds one)."""

    built: ClassVar[int] = 0

    def __init__(self, ctx: DurableObjectState, env: Env) -> None:
        super().__init__(ctx, env)
        CountedRoom.built += 1


@pytest.fixture(autouse=True)
def _count_from_zero() -> None:
    CountedRoom.built = 0


BINDINGS = {"ROOMS": CountedRoom}


async def join(rt: Runtime, room: str, username: str) -> WebSocket:
    """Join *room* through the worker, as the ASGI app would; return the client end."""
    request = Request(
        f"https://chat.test/rooms/{room}/ws?username={username}",
        headers={"upgrade": "websocket"},
    )
    response = await chat_app.fetch(request, rt.env)
    assert response.status == 101, await response.text()
    client = response.websocket
    assert isinstance(client, WebSocket)
    client.accept()
    return client


async def recv(ws: WebSocket) -> dict[str, Any]:
    with anyio.fail_after(5):
        message = await ws.receive()
    assert isinstance(message, str), message
    event: dict[str, Any] = json.loads(message)
    return event


async def welcome(ws: WebSocket) -> dict[str, Any]:
    event = await recv(ws)
    assert event["type"] == "welcome"
    return event


def runtime(clock: ManualClock | None = None, **options: Any) -> Runtime:
    return Runtime(bindings=BINDINGS, clock=clock or ManualClock(), **options)


# -- in process -------------------------------------------------------------------


async def test_messages_reach_everyone_else_with_join_and_leave_notices() -> None:
    async with runtime() as rt:
        ann = await join(rt, "lobby", "ann")
        assert await welcome(ann) == {
            "type": "welcome",
            "username": "ann",
            "online": ["ann"],
            "history": [],
        }
        bob = await join(rt, "lobby", "bob")
        assert (await welcome(bob))["online"] == ["ann", "bob"]
        assert await recv(ann) == {
            "type": "join",
            "username": "bob",
            "online": ["ann", "bob"],
        }
        ann.send("hello bob")
        at = 1_767_225_600_000  # ManualClock's start
        assert await recv(bob) == {
            "type": "message",
            "username": "ann",
            "text": "hello bob",
            "at": at,
        }
        bob.send("hi ann")
        # Ann's next message is Bob's: her own was not echoed to her.
        assert (await recv(ann))["text"] == "hi ann"
        # Another room hears nothing of this one.
        cat = await join(rt, "kitchen", "cat")
        assert (await welcome(cat))["history"] == []
        bob.close(1000, "bye")
        assert await recv(ann) == {
            "type": "leave",
            "username": "bob",
            "online": ["ann"],
        }
        with anyio.fail_after(5):
            assert (await bob.receive()) == WebSocketClose(
                code=1000, reason="bye", was_clean=True
            )


async def test_a_joiner_gets_the_last_100_messages() -> None:
    clock = ManualClock()
    async with runtime(clock) as rt:
        ann = await join(rt, "lobby", "ann")
        await welcome(ann)
        observer = await join(rt, "lobby", "observer")
        await welcome(observer)
        for n in range(105):
            ann.send(f"message {n}")
            assert (await recv(observer))["text"] == f"message {n}"  # stored
            await clock.advance(1)
        bob = await join(rt, "lobby", "bob")
        history = (await welcome(bob))["history"]
        assert [m["text"] for m in history] == [f"message {n}" for n in range(5, 105)]
        assert {m["username"] for m in history} == {"ann"}
        assert history[0]["at"] + 99 == history[-1]["at"]
        # The table itself holds 100 rows, not 105.
        response = await chat_app.fetch(
            Request("https://chat.test/rooms/lobby/messages"), rt.env
        )
        assert response.status == 200
        assert len(json.loads(await response.text())["messages"]) == 100


async def test_bad_requests_are_refused_before_reaching_a_room() -> None:
    async with runtime() as rt:
        cases = [
            ("/rooms/lobby/ws", {"upgrade": "websocket"}, 400),
            ("/rooms/lobby/ws?username=", {"upgrade": "websocket"}, 400),
            ("/rooms/lobby/ws?username=%20", {"upgrade": "websocket"}, 400),
            ("/rooms/lobby/ws?username=" + "x" * 33, {"upgrade": "websocket"}, 400),
            ("/rooms/lobby/ws?username=ann", {}, 426),
            ("/rooms/lobby", {}, 404),
            ("/rooms//ws?username=ann", {"upgrade": "websocket"}, 404),
            ("/rooms/lobby/other", {}, 404),
            ("/", {}, 404),
        ]
        for path, headers, status in cases:
            request = Request("https://chat.test" + path, headers=headers)
            response = await chat_app.fetch(request, rt.env)
            assert response.status == status, path
        post = Request("https://chat.test/rooms/lobby/messages", method="POST")
        assert (await chat_app.fetch(post, rt.env)).status == 405


async def test_bad_messages_get_an_error_to_the_sender_only() -> None:
    async with runtime() as rt:
        ann = await join(rt, "lobby", "ann")
        await welcome(ann)
        bob = await join(rt, "lobby", "bob")
        await welcome(bob)
        await recv(ann)  # bob joined
        ann.send(b"\x00")
        assert await recv(ann) == {"type": "error", "error": "send text frames"}
        ann.send("x" * 2001)
        assert (await recv(ann))["type"] == "error"
        ann.send("   ")  # blank: ignored
        ann.send("x" * 2000)
        assert (await recv(bob))["text"] == "x" * 2000  # nothing came before it


async def test_an_idle_room_hibernates_and_wakes_without_losing_anyone() -> None:
    clock = ManualClock()
    async with runtime(clock) as rt:
        sockets = {}
        for name in ("ann", "bob", "cat"):
            sockets[name] = await join(rt, "lobby", name)
            await welcome(sockets[name])
        ann, bob, cat = sockets.values()
        assert (await recv(ann))["username"] == "bob"
        assert (await recv(ann))["username"] == "cat"
        assert (await recv(bob))["username"] == "cat"
        ann.send("before")
        assert (await recv(bob))["text"] == "before"
        assert (await recv(cat))["text"] == "before"
        # A ping is answered by the runtime: it is no activity of the room.
        bob.send("ping")
        with anyio.fail_after(5):
            assert await bob.receive() == "pong"
        assert CountedRoom.built == 1
        await clock.advance(IDLE_MS)  # every client idle: evicted, sockets kept
        assert CountedRoom.built == 1
        # The next message builds a new room, which finds every client, with
        # the usernames from the attachments.
        bob.send("after")
        for ws in (ann, cat):
            assert await recv(ws) == {
                "type": "message",
                "username": "bob",
                "text": "after",
                "at": clock.now_ms(),
            }
        assert CountedRoom.built == 2
        ann.send("again")  # the same instance, still awake
        assert (await recv(bob))["text"] == "again"
        assert (await recv(cat))["text"] == "again"
        assert CountedRoom.built == 2
        await clock.advance(IDLE_MS)  # hibernates again; a close wakes it
        cat.close(1000, "")
        for ws in (ann, bob):
            assert await recv(ws) == {
                "type": "leave",
                "username": "cat",
                "online": ["ann", "bob"],
            }
        dan = await join(rt, "lobby", "dan")
        joined = await welcome(dan)
        assert joined["online"] == ["ann", "bob", "dan"]
        assert [(m["username"], m["text"]) for m in joined["history"]] == [
            ("ann", "before"),
            ("bob", "after"),
            ("ann", "again"),
        ]
        assert CountedRoom.built == 3


async def test_a_dropped_connection_is_a_leave(tmp_path: Path) -> None:
    async with runtime() as rt:
        ann = await join(rt, "lobby", "ann")
        await welcome(ann)
        bob = await join(rt, "lobby", "bob")
        await welcome(bob)
        await recv(ann)
        bob._disconnect()  # what the ASGI app does when the TCP connection drops
        assert await recv(ann) == {
            "type": "leave",
            "username": "bob",
            "online": ["ann"],
        }


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    async with runtime(storage=SQLiteBackend(storage)) as rt:
        ann = await join(rt, "lobby", "ann")
        await welcome(ann)
        bob = await join(rt, "lobby", "bob")
        await welcome(bob)
        ann.send("kept")
        assert (await recv(bob))["text"] == "kept"  # sent once durable
    async with runtime(storage=SQLiteBackend(storage)) as rt:
        cat = await join(rt, "lobby", "cat")
        joined = await welcome(cat)
        assert joined["online"] == ["cat"]  # the connections ended with the server
        assert [(m["username"], m["text"]) for m in joined["history"]] == [
            ("ann", "kept")
        ]


# -- over real WebSockets ---------------------------------------------------------


def _ws(url: str, path: str) -> str:
    return "ws" + url.removeprefix("http") + path


def _recv(ws: ClientConnection) -> dict[str, Any]:
    message = ws.recv(timeout=5)
    assert isinstance(message, str)
    event: dict[str, Any] = json.loads(message)
    return event


def test_chat_over_websockets_survives_hibernation(
    serve: Serve, tmp_path: Path
) -> None:
    worker = Worker(chat_app.fetch, bindings=BINDINGS)
    # SQLite storage, as `pyobjects serve` uses (a MemoryBackend's SQL databases,
    # made on the server's thread, fail to close at exit from the main thread).
    storage = SQLiteBackend(tmp_path / "data")
    served = ClockedApp(worker, ManualClock(), storage=storage)
    url = serve(served)
    with pytest.raises(InvalidStatus) as refused:
        with connect(_ws(url, "/rooms/lobby/ws"), open_timeout=5):
            pass  # pragma: no cover
    assert refused.value.response.status_code == 400
    assert b"username" in refused.value.response.body

    @contextlib.contextmanager
    def opened(username: str) -> Iterator[ClientConnection]:
        path = f"/rooms/lobby/ws?username={username}"
        with connect(_ws(url, path), open_timeout=5) as ws:
            assert _recv(ws)["type"] == "welcome"
            yield ws

    with opened("ann") as ann, opened("bob") as bob:
        assert _recv(ann)["username"] == "bob"
        with opened("cat") as cat:
            assert _recv(ann)["username"] == "cat"
            assert _recv(bob)["username"] == "cat"
            ann.send("hello")
            assert _recv(bob)["text"] == "hello"
            assert _recv(cat)["text"] == "hello"

            assert CountedRoom.built == 1
            served.advance(IDLE_MS)  # every client idle: the room hibernates
            cat.send("still here")  # and wakes
            for ws in (ann, bob):
                event = _recv(ws)
                assert (event["username"], event["text"]) == ("cat", "still here")
            bob.send("me too")
            assert [_recv(ws)["username"] for ws in (ann, cat)] == ["bob", "bob"]
            assert CountedRoom.built == 2
        # cat's connection closed cleanly
        for ws in (ann, bob):
            assert _recv(ws) == {
                "type": "leave",
                "username": "cat",
                "online": ["ann", "bob"],
            }
    with httpx.Client(base_url=url, timeout=5) as http:
        messages = http.get("/rooms/lobby/messages").json()["messages"]
        assert [(m["username"], m["text"]) for m in messages] == [
            ("ann", "hello"),
            ("cat", "still here"),
            ("bob", "me too"),
        ]
        assert http.get("/rooms/lobby/ws?username=ann").status_code == 426
