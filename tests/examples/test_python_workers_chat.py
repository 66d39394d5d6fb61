"""examples/python_workers_chat: a Python Worker served from its wrangler.toml.

The example is spelled the Python Workers way; these tests drive it as its
README describes: in process through the App (asyncio and trio), under a
real uvicorn with the ``websockets`` client, and as a real ``pyobjects
serve`` started in the example's folder with no arguments but a port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from examples.python_workers_chat import app as chat_app
from websockets.sync.client import ClientConnection, connect

from pyobjects import DurableObjectBinding
from pyobjects._wrangler import read_config
from pyobjects.asgi import App
from tests.asgi_driver import WebSocketPeer, http, lifespan, websocket
from tests.examples.browser import CHROMIUM, chromium

if TYPE_CHECKING:
    from .support import Serve

EXAMPLE = Path(chat_app.__file__).parent
ROOT = EXAMPLE.parent.parent


def make_app(**options: Any) -> App:
    # What `pyobjects serve` builds from wrangler.toml, with the module the
    # test already imported (so the test sees the same classes).
    worker = read_config(EXAMPLE / "wrangler.toml").worker_from(chat_app)
    return App(worker, **options)


async def next_event(peer: WebSocketPeer) -> dict[str, Any]:
    message = await peer.next()
    assert message["type"] == "websocket.send", message
    event: dict[str, Any] = json.loads(message["text"])
    return event


def test_the_config_binds_the_room_with_wranglers_key() -> None:
    worker = read_config(EXAMPLE / "wrangler.toml").worker_from(chat_app)
    assert worker.bindings["CHAT_ROOM"] == DurableObjectBinding(
        object_class=chat_app.ChatRoom, unique_key="python-workers-chat-ChatRoom"
    )
    assert worker.vars == {"ROOM_LIMIT": "50"}


async def test_two_clients_chat_in_process() -> None:
    app = make_app()
    async with lifespan(app):
        page = await http(app, "GET", "/")
        assert page.status == 200
        assert page.header("content-type") == "text/html;charset=utf-8"
        assert b"new WebSocket" in page.body
        missing = await http(app, "GET", "/nowhere")
        assert (missing.status, json.loads(missing.body)) == (
            404,
            {"error": "not found"},
        )
        async with websocket(app, "/rooms/lobby/ws", query=b"name=ada") as ada:
            assert (await ada.next())["type"] == "websocket.accept"
            assert await next_event(ada) == {
                "type": "join",
                "name": "ada",
                "online": ["ada"],
            }
            async with websocket(app, "/rooms/lobby/ws", query=b"name=bob") as bob:
                assert (await bob.next())["type"] == "websocket.accept"
                joined = {"type": "join", "name": "bob", "online": ["ada", "bob"]}
                assert await next_event(ada) == joined
                assert await next_event(bob) == joined
                who = await http(app, "GET", "/rooms/lobby/who")
                assert json.loads(who.body) == {"online": ["ada", "bob"]}
                await bob.send_text("hello")
                said = {"type": "message", "name": "bob", "text": "hello"}
                assert await next_event(ada) == said
                assert await next_event(bob) == said
                await bob.disconnect(1000, "bye")
            assert await next_event(ada) == {
                "type": "leave",
                "name": "bob",
                "online": ["ada"],
            }
            await ada.disconnect(1000)


async def test_a_plain_get_to_the_socket_route_is_refused() -> None:
    app = make_app()
    async with lifespan(app):
        result = await http(app, "GET", "/rooms/lobby/ws")
    assert (result.status, result.body) == (426, b"expected a WebSocket upgrade")


def recv_event(conn: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(conn.recv(timeout=5))
    return event


def test_two_clients_chat_under_uvicorn(serve: Serve) -> None:
    base = serve(make_app(), ws_max_size=1 << 20)
    ws_base = base.replace("http://", "ws://")
    with connect(f"{ws_base}/rooms/r1/ws?name=ada") as ada:
        assert recv_event(ada)["type"] == "join"
        with connect(f"{ws_base}/rooms/r1/ws?name=bob") as bob:
            assert recv_event(ada)["online"] == ["ada", "bob"]
            assert recv_event(bob)["online"] == ["ada", "bob"]
            ada.send("hi bob")
            said = {"type": "message", "name": "ada", "text": "hi bob"}
            assert recv_event(bob) == said
            assert recv_event(ada) == said
        assert recv_event(ada) == {"type": "leave", "name": "bob", "online": ["ada"]}


def start_serve(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``pyobjects serve`` in the example's folder; return it and its URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "pyobjects", "serve", "--port", "0"),
            *("--storage", str(tmp_path / "data")),
        ],
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "pyobjects: serving wrangler.toml at http://127.0.0.1:" in line, line
    return process, line.split(" at ")[1].split()[0]


def stop_serve(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_pyobjects_serve_in_the_folder_serves_the_project(tmp_path: Path) -> None:
    process, base = start_serve(tmp_path)
    try:
        assert "<title>pyobjects chat</title>" in httpx.get(base + "/").text
        ws_base = base.replace("http://", "ws://")
        with connect(f"{ws_base}/rooms/r2/ws?name=cy") as cy:
            assert recv_event(cy) == {"type": "join", "name": "cy", "online": ["cy"]}
            cy.send("anyone?")
            assert recv_event(cy)["text"] == "anyone?"
    finally:
        stop_serve(process)


LOG = "document.getElementById('log').textContent"


@pytest.mark.skipif(
    CHROMIUM is None
    and not os.environ.get("CI"),  # in CI it must run: .ci/run installs it
    reason="needs Debian's chromium",
)
def test_the_chat_page_works_in_headless_chromium(tmp_path: Path) -> None:
    # Two tabs of the example's own page, against a real `pyobjects serve`:
    # what one types reaches the other through the room.
    process, base = start_serve(tmp_path)
    try:
        with chromium(tmp_path / "profile") as browser:
            ada = browser.open(f"{base}/?room=web&name=ada")
            browser.wait_for(ada, f"{LOG}.includes('ada joins')")
            bob = browser.open(f"{base}/?room=web&name=bob")
            browser.wait_for(bob, f"{LOG}.includes('bob joins')")
            browser.wait_for(ada, f"{LOG}.includes('bob joins')")
            browser.evaluate(
                bob,
                "document.getElementById('text').value = 'hello from bob';"
                "document.getElementById('form').requestSubmit(); true",
            )
            assert "bob: hello from bob" in browser.wait_for(
                ada, f"{LOG}.includes('bob: hello') && {LOG}"
            )
            assert browser.evaluate(bob, "document.getElementById('text').value") == ""
    finally:
        stop_serve(process)
