"""Run a real uvicorn server on 127.0.0.1 (a free port) in a thread.

uvicorn drives its own asyncio event loop, so the server gets a thread of its
own; the test talks to it over loopback from its own event loop, which may be
asyncio or trio. Startup is awaited by polling ``server.started`` in a
bounded loop; shutdown is ``should_exit`` plus a bounded ``join``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

STARTUP_TIMEOUT = 10.0


class ServerThread:
    def __init__(self, app: Any, **config: Any) -> None:
        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "on")
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, **config)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        """Start serving; return the base URL (``http://127.0.0.1:PORT``)."""
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start in time")
            time.sleep(0.005)  # polling a flag set by another thread
        (server,) = self.server.servers
        assert server.sockets
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STARTUP_TIMEOUT)
        if self.thread.is_alive():  # pragma: no cover - a hung server
            self.server.force_exit = True
            self.thread.join(STARTUP_TIMEOUT)
        assert not self.thread.is_alive(), "uvicorn did not stop"


class HypercornTrioThread:
    """hypercorn on trio in a thread: the App under a real server on trio."""

    def __init__(self, app: Any) -> None:
        from hypercorn.config import Config  # optional server

        self.app = app
        self.config = Config()
        self.config.bind = ["127.0.0.1:0"]
        self.config.accesslog = None
        self.config.errorlog = None
        self.ready = threading.Event()
        self.url = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import trio

        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        import trio
        from hypercorn.trio import serve

        self.stop_event = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(self._serve, serve)
            self.url = binds[0]
            self.ready.set()

    async def _serve(self, serve: Any, task_status: Any) -> None:
        await serve(
            self.app,
            self.config,
            shutdown_trigger=self.stop_event.wait,
            task_status=task_status,
        )

    def start(self) -> str:
        self.thread.start()
        if not self.ready.wait(STARTUP_TIMEOUT):
            raise TimeoutError("hypercorn did not start in time")
        if self.error is not None:
            raise RuntimeError("hypercorn failed to start") from self.error
        return self.url

    def stop(self) -> None:
        import trio

        if self.thread.is_alive() and self.error is None:
            trio.from_thread.run_sync(self.stop_event.set, trio_token=self.token)
        self.thread.join(STARTUP_TIMEOUT)
        assert not self.thread.is_alive(), "hypercorn did not stop"
