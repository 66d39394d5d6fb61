"""Shared test helpers: a backend wrapper that can delay or fail commits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyobjects import WebSocket, WebSocketClose
    from pyobjects.storage import (
        AlarmEntry,
        ListQuery,
        ObjectStore,
        StorageBackend,
        WriteBatch,
    )


class ControlledStore:
    def __init__(self, inner: ObjectStore, owner: ControlledBackend) -> None:
        self._inner = inner
        self._owner = owner

    async def get(self, keys: Sequence[str], /) -> dict[str, bytes]:
        return await self._inner.get(keys)

    async def list(self, query: ListQuery, /) -> list[tuple[str, bytes]]:
        return await self._inner.list(query)

    async def get_alarm(self) -> int | None:
        return await self._inner.get_alarm()

    async def get_name(self) -> str | None:
        return await self._inner.get_name()

    async def commit(self, batch: WriteBatch, /) -> None:
        owner = self._owner
        owner.commits.append(batch)
        if owner.hold is not None:
            await owner.hold.wait()
        if owner.fail_next > 0:
            owner.fail_next -= 1
            raise OSError("injected commit failure")
        await self._inner.commit(batch)

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        # Optional capabilities (SQL, point-in-time recovery) of the inner store.
        return getattr(self._inner, name)


class ControlledBackend:
    """Wraps a backend; records commits, can hold them or make them fail."""

    def __init__(self, inner: StorageBackend) -> None:
        self.inner = inner
        self.commits: list[WriteBatch] = []
        self.hold: anyio.Event | None = None
        self.fail_next = 0

    def open(self, namespace: str, object_id: str, /) -> ObjectStore:
        return ControlledStore(self.inner.open(namespace, object_id), self)

    async def list_object_ids(self, namespace: str, /) -> list[str]:
        return await self.inner.list_object_ids(namespace)

    async def pending_alarms(self) -> list[AlarmEntry]:
        return await self.inner.pending_alarms()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def recv(ws: WebSocket) -> str | bytes | WebSocketClose:
    """``await ws.receive()``, failing instead of hanging if nothing comes.

    The limit is real time but never reached by a passing test (what it waits
    for is already on its way); it turns a regression into a quick failure.
    """
    with anyio.fail_after(5):
        return await ws.receive()


ROOT = Path(__file__).resolve().parent.parent


def serve_subprocess(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """Start ``pyobjects serve tests.cli_app:worker ARGS`` as a real process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pyobjects", "serve", "tests.cli_app:worker", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
