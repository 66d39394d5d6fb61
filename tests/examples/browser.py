"""Drive a headless Chromium over the DevTools protocol (no extra dependency).

Debian's ``chromium`` (``apt-get install chromium``) is started headless with
a fresh profile and ``--remote-debugging-port=0``; the port it picked is read
from ``DevToolsActivePort`` in the profile. Pages are opened and inspected
with ``Target.*`` and ``Runtime.evaluate`` over the ``websockets`` client.
Tests that need it skip when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

from websockets.sync.client import ClientConnection, connect

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHROMIUM = shutil.which("chromium")
START_TIMEOUT = 30.0
# The flags this machine needs: no sandbox as root, and no background
# networking (its connections are refused here, many at a time).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class Browser:
    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn
        self._ids = itertools.count(1)

    def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        """Send one command; return its result (events in between are dropped)."""
        message: dict[str, Any] = {
            "id": next(self._ids),
            "method": method,
            "params": params,
        }
        if session is not None:
            message["sessionId"] = session
        self._conn.send(json.dumps(message))
        while True:
            reply = json.loads(self._conn.recv(timeout=START_TIMEOUT))
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> str:
        """Open *url* in a new tab; return the session that drives it."""
        target = self.call("Target.createTarget", url=url)["targetId"]
        return str(
            self.call("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
        )

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, *, timeout: float = 10.0) -> Any:
        """Evaluate *expression* until it is truthy (bounded); return its value."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # the page may still load
                value = self.evaluate(session, expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true in the page: {expression}")
            time.sleep(0.05)  # polling another process, which has no event for it


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Browser]:
    """Start headless Chromium with a fresh profile in *profile*; stop it after."""
    assert CHROMIUM is not None
    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (active.is_file() and len(active.read_text().split()) == 2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)  # waiting for another process to write a file
        port, path = active.read_text().split()
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as conn:
            yield Browser(conn)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung browser
            process.kill()
            process.wait()
