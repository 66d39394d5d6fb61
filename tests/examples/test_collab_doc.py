"""examples/collab_doc: one object orders and transforms a document's edits.

The transformation itself with hypothesis; the document in process (asyncio
and trio) through the client ends of its sockets; then several real clients
over WebSockets under uvicorn, with conflicting edits and a server restart.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from examples.collab_doc import app as doc_app
from examples.collab_doc.app import Op, apply, transform, xform
from hypothesis import given, settings, strategies as st
from websockets.sync.client import ClientConnection, connect

from pyobjects import Request, Runtime, WebSocket
from pyobjects.asgi import App
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import ManualClock
from tests.servers import ServerThread

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

BASE = "0123456789"

# -- the transformation -----------------------------------------------------------


def insert(pos: int, text: str) -> Op:
    return {"op": "insert", "pos": pos, "text": text}


def delete(pos: int, length: int) -> Op:
    return {"op": "delete", "pos": pos, "len": length}


def test_transform_cases() -> None:
    # Inserts: an earlier one before (or at) the position moves it on.
    assert transform(insert(5, "x"), insert(2, "ab")) == [insert(7, "x")]
    assert transform(insert(2, "x"), insert(2, "ab")) == [insert(4, "x")]
    assert transform(insert(2, "x"), insert(2, "ab"), after=False) == [insert(2, "x")]
    assert transform(insert(1, "x"), insert(2, "ab")) == [insert(1, "x")]
    # An insert after, inside or before a deleted range.
    assert transform(insert(8, "x"), delete(2, 3)) == [insert(5, "x")]
    assert transform(insert(3, "x"), delete(2, 3)) == [insert(2, "x")]
    assert transform(insert(2, "x"), delete(2, 3)) == [insert(2, "x")]
    # A delete around a concurrent insert is split, and the insert survives.
    assert transform(delete(2, 4), insert(4, "ab")) == [delete(2, 2), delete(4, 2)]
    assert transform(delete(2, 4), insert(2, "ab")) == [delete(4, 4)]
    assert transform(delete(2, 4), insert(6, "ab")) == [delete(2, 4)]
    # Deletes lose what was deleted already.
    assert transform(delete(2, 4), delete(0, 3)) == [delete(0, 3)]
    assert transform(delete(2, 4), delete(3, 1)) == [delete(2, 3)]
    assert transform(delete(2, 4), delete(1, 8)) == []
    assert transform(delete(5, 2), delete(0, 2)) == [delete(3, 2)]
    assert transform(delete(0, 2), delete(5, 2)) == [delete(0, 2)]


def _serve(edits: list[Op]) -> str:
    """What the document does with edits all made against version 0 of BASE."""
    text, log = BASE, list[list[Op]]()
    for edit in edits:
        ops = [edit]
        for earlier in log:
            ops, _ = xform(ops, earlier)
        for op in ops:
            text = apply(text, op)
        log.append(ops)
    return text


@st.composite
def concurrent_edits(draw: st.DrawFn) -> list[Op]:
    """Edits of BASE made at the same time; each insert has its own letters."""
    edits: list[Op] = []
    for n in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(BASE)))
        if draw(st.booleans()):
            edits.append(insert(pos, chr(ord("A") + n) * draw(st.integers(1, 3))))
        elif pos < len(BASE):
            edits.append(delete(pos, draw(st.integers(1, len(BASE) - pos))))
    return edits


@settings(max_examples=300, deadline=None)
@given(concurrent_edits())
def test_concurrent_edits_keep_every_intention(edits: list[Op]) -> None:
    text = _serve(edits)
    deleted = {
        BASE[i]
        for op in edits
        if op["op"] == "delete"
        for i in range(op["pos"], op["pos"] + op["len"])
    }
    # The base characters nobody deleted are there, in their order; the
    # others are gone.
    assert [c for c in text if c.isdigit()] == [c for c in BASE if c not in deleted]
    # Every insert is there, whole, right after the base character it
    # followed (or after another insert made at the same place).
    for op in edits:
        if op["op"] == "insert":
            at = text.index(op["text"])
            assert text.count(op["text"][0]) == len(op["text"])
            before = [c for c in text[:at] if c.isdigit()]
            assert [c for c in BASE[: op["pos"]] if c not in deleted] == before


# -- in process -------------------------------------------------------------------


async def open_doc(rt: Runtime, name: str = "notes") -> tuple[WebSocket, str, int]:
    """Connect through the worker; return the client end and the synced state."""
    request = Request(
        f"https://doc.test/docs/{name}/ws", headers={"upgrade": "websocket"}
    )
    response = await doc_app.fetch(request, rt.env)
    assert response.status == 101, await response.text()
    client = response.websocket
    assert isinstance(client, WebSocket)
    client.accept()
    sync = await recv(client)
    assert sync["type"] == "sync"
    return client, sync["text"], sync["version"]


async def recv(ws: WebSocket) -> dict[str, Any]:
    with anyio.fail_after(5):
        message = await ws.receive()
    assert isinstance(message, str), message
    event: dict[str, Any] = json.loads(message)
    return event


def edit(ws: WebSocket | ClientConnection, op: Op, base: int, id: Any = None) -> None:  # noqa: A002
    ws.send(json.dumps({**op, "base": base, "id": id}))


async def test_edits_are_ordered_transformed_and_broadcast() -> None:
    async with Runtime(bindings=doc_app.worker.bindings, clock=ManualClock()) as rt:
        ann, text, version = await open_doc(rt)
        assert (text, version) == ("", 0)
        edit(ann, insert(0, "hello world"), 0, "a1")
        assert await recv(ann) == {
            "type": "op",
            "version": 1,
            "ops": [insert(0, "hello world")],
            "id": "a1",
        }
        bob, text, version = await open_doc(rt)  # a late joiner
        assert (text, version) == ("hello world", 1)
        # Both edit version 1 at once: Ann capitalizes, Bob appends.
        edit(ann, delete(0, 1), 1, "a2")
        edit(ann, insert(0, "H"), 1, "a3")  # also made against version 1
        edit(bob, insert(11, "!"), 1, "b1")
        texts = {"ann": "hello world", "bob": "hello world"}
        for name, ws in (("ann", ann), ("bob", bob)):
            ids = []
            for version in (2, 3, 4):
                event = await recv(ws)
                assert event["version"] == version
                ids.append(event["id"])
                for op in event["ops"]:
                    texts[name] = apply(texts[name], op)
            assert sorted(ids) == ["a2", "a3", "b1"]
        assert texts == {"ann": "Hello world!", "bob": "Hello world!"}
        response = await doc_app.fetch(Request("https://doc.test/docs/notes"), rt.env)
        assert json.loads(await response.text()) == {
            "text": "Hello world!",
            "version": 4,
        }
        # Another document is another object.
        _, text, version = await open_doc(rt, "other")
        assert (text, version) == ("", 0)


async def test_bad_edits_get_an_error_to_their_sender_only() -> None:
    async with Runtime(bindings=doc_app.worker.bindings, clock=ManualClock()) as rt:
        ann, _, _ = await open_doc(rt)
        bob, _, _ = await open_doc(rt)
        edit(ann, insert(0, "abc"), 0)
        assert (await recv(ann))["version"] == 1
        assert (await recv(bob))["version"] == 1
        for message, error in [
            ("not json", "an edit is a JSON object"),
            ("[1]", "an edit is a JSON object"),
            ('{"op": "insert", "pos": 0, "text": "x"}', "an edit needs an int 'base'"),
            ('{"op": "move", "pos": 0, "base": 1}', "'op' is 'insert' or 'delete'"),
            ('{"op": "insert", "pos": 0, "base": 1}', "an insert needs a non-empty"),
            ('{"op": "delete", "pos": 0, "base": 1}', "a delete needs an int 'len'"),
            ('{"op": "insert", "pos": 0, "text": "x", "base": 2}', "version 2 does"),
            (
                '{"op": "insert", "pos": 1, "text": "x", "base": 0}',
                "the edit is outside",
            ),
            ('{"op": "delete", "pos": 2, "len": 2, "base": 1}', "the edit is outside"),
        ]:
            ann.send(message)
            event = await recv(ann)
            assert event["type"] == "error", message
            assert event["error"].startswith(error), (message, event)
            assert event["version"] == 1
        too_long = "x" * doc_app.MAX_LENGTH
        edit(ann, insert(0, too_long), 1)
        assert (await recv(ann))["error"].startswith("a document is at most")
        edit(ann, insert(3, "d"), 1)
        # Bob saw none of the errors: his next message is the edit.
        assert (await recv(bob))["ops"] == [insert(3, "d")]
        for path, status in [
            ("/docs/notes/ws", 426),
            ("/docs/notes/other", 404),
            ("/docs//ws", 404),
            ("/", 404),
        ]:
            response = await doc_app.fetch(Request("https://doc.test" + path), rt.env)
            assert response.status == status, path


async def test_the_document_survives_hibernation_and_restarts(tmp_path: Path) -> None:
    clock = ManualClock()
    storage = tmp_path / "data"
    bindings = doc_app.worker.bindings
    async with Runtime(
        bindings=bindings, clock=clock, storage=SQLiteBackend(storage)
    ) as rt:
        ann, _, _ = await open_doc(rt)
        edit(ann, insert(0, "abc"), 0)
        assert (await recv(ann))["version"] == 1
        await clock.advance(10_000)  # idle: evicted; the constructor reloads
        edit(ann, insert(0, "X"), 0)  # still made against version 0
        assert (await recv(ann))["ops"] == [insert(3, "X")]
    async with Runtime(
        bindings=bindings, clock=clock, storage=SQLiteBackend(storage)
    ) as rt:
        bob, text, version = await open_doc(rt)
        assert (text, version) == ("abcX", 2)
        edit(bob, insert(0, "Y"), 1)  # the log of operations was kept too
        assert (await recv(bob))["ops"] == [insert(0, "Y")]


async def test_an_edit_too_old_must_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doc_app, "HISTORY", 3)
    async with Runtime(bindings=doc_app.worker.bindings, clock=ManualClock()) as rt:
        ann, _, _ = await open_doc(rt)
        for n in range(5):
            edit(ann, insert(0, "x"), n)
            assert (await recv(ann))["version"] == n + 1
        edit(ann, insert(0, "y"), 2)  # three versions back: fine
        assert (await recv(ann))["version"] == 6
        edit(ann, insert(0, "y"), 2)  # four: too old
        assert (await recv(ann))["error"] == "version 2 is too old: reconnect to resync"


# -- over real WebSockets ---------------------------------------------------------


class Client:
    """A real client that applies the document's operations in version order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        sync = self.recv()
        assert sync["type"] == "sync"
        self.text: str = sync["text"]
        self.version: int = sync["version"]

    def recv(self) -> dict[str, Any]:
        message = self.ws.recv(timeout=5)
        assert isinstance(message, str)
        event: dict[str, Any] = json.loads(message)
        return event

    def catch_up(self, version: int) -> None:
        while self.version < version:
            event = self.recv()
            assert event["type"] == "op", event
            assert event["version"] == self.version + 1
            for op in event["ops"]:
                self.text = apply(self.text, op)
            self.version = event["version"]


def test_concurrent_real_clients_converge_and_the_text_survives_a_restart(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "data"
    server = ServerThread(App(doc_app.worker, storage=SQLiteBackend(storage)))
    url = server.start()
    ws_url = "ws" + url.removeprefix("http") + "/docs/shared/ws"
    text = ""
    try:
        with (
            connect(ws_url, open_timeout=5) as a,
            connect(ws_url, open_timeout=5) as b,
            connect(ws_url, open_timeout=5) as c,
            connect(ws_url, open_timeout=5) as d,
        ):
            clients = [Client(ws) for ws in (a, b, c, d)]
            edit(a, insert(0, "The quick fox"), 0)
            for client in clients:
                client.catch_up(1)

            # Everyone edits version 1 at once (a thread each), several times,
            # without waiting for the others: every edit conflicts.
            def send_edits(n: int) -> None:
                for round_ in range(3):
                    letter = "ABCD"[n] * (round_ + 1)
                    edit(clients[n].ws, insert(4 + n, letter), 1)
                    edit(clients[n].ws, delete(n + round_, 2), 1)

            with ThreadPoolExecutor(len(clients)) as pool:
                for sent in [pool.submit(send_edits, n) for n in range(4)]:
                    sent.result(timeout=5)
            last = 1 + 3 * 2 * len(clients)
            for client in clients:
                client.catch_up(last)
            texts = {client.text for client in clients}
            assert len(texts) == 1, texts
            (text,) = texts
            for n in range(4):
                for round_ in range(3):
                    assert "ABCD"[n] * (round_ + 1) in text
            with httpx.Client(base_url=url, timeout=5) as http:
                state = http.get("/docs/shared").json()
            assert state == {"text": text, "version": last}
    finally:
        server.stop()
    # A new server on the same storage: a late joiner gets the same document.
    server = ServerThread(App(doc_app.worker, storage=SQLiteBackend(storage)))
    url = server.start()
    try:
        ws_url = "ws" + url.removeprefix("http") + "/docs/shared/ws"
        with connect(ws_url, open_timeout=5) as e:
            late = Client(e)
            assert (late.text, late.version) == (text, last)
            edit(e, insert(0, ">"), last)
            late.catch_up(last + 1)
            assert late.text == ">" + text
    finally:
        server.stop()
