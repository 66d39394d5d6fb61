from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pyobjects.storage import MemoryBackend, SQLiteBackend
from pyobjects.testing._conformance import check_storage_backend

if TYPE_CHECKING:
    from pathlib import Path

    from pyobjects.storage import ObjectStore


async def test_memory_backend() -> None:
    await check_storage_backend(MemoryBackend)


@pytest.mark.parametrize("max_open_connections", [256, 1])
async def test_sqlite_backend(tmp_path: Path, max_open_connections: int) -> None:
    await check_storage_backend(
        lambda: SQLiteBackend(tmp_path, max_open_connections=max_open_connections)
    )


async def test_sqlite_backend_twice_in_one_directory(tmp_path: Path) -> None:
    # The suite works in fresh namespaces, so it passes on a backend that
    # already holds data (here: the first run's).
    async def make() -> SQLiteBackend:
        return SQLiteBackend(tmp_path, synchronous="off")

    await check_storage_backend(make)
    await check_storage_backend(make)


class BrokenBackend:
    """A MemoryBackend with one flaw, to show that the suite notices it."""

    def __init__(self, flaw: str) -> None:
        self._inner = MemoryBackend()
        self._flaw = flaw
        self.pending_alarms = self._inner.pending_alarms
        self.aclose = self._inner.aclose

    def _lax(self, namespace: str, object_id: str) -> tuple[str, str]:
        if self._flaw == "lax namespace" and namespace in BAD_NAMESPACES:
            return "lax", object_id
        if self._flaw == "lax object id" and object_id in BAD_IDS:
            return namespace, "0" * 64
        return namespace, object_id

    def open(self, namespace: str, object_id: str, /) -> ObjectStore:
        store = self._inner.open(*self._lax(namespace, object_id))
        return ForgetfulStore(store) if self._flaw == "forgets the name" else store

    async def list_object_ids(self, namespace: str, /) -> list[str]:
        if self._flaw == "lax list_object_ids" and namespace in BAD_NAMESPACES:
            return []
        return await self._inner.list_object_ids(namespace)


class ForgetfulStore:
    def __init__(self, inner: ObjectStore) -> None:
        self.get = inner.get
        self.list = inner.list
        self.get_alarm = inner.get_alarm
        self.commit = inner.commit
        self.close = inner.close

    async def get_name(self) -> str | None:
        return None


BAD_NAMESPACES = {"", ".", "..", "a/b", "../x", "a b", "ns\n", "\xe9", "x" * 129}
BAD_IDS = {"", "0" * 63, "0" * 65, "A" * 64, "g" * 64, "0" * 63 + "\n", "../" * 21}


@pytest.mark.parametrize(
    ("flaw", "message"),
    [
        ("forgets the name", "name after"),
        ("lax namespace", "open\\(\\) in namespace"),
        ("lax list_object_ids", "list_object_ids"),
        ("lax object id", "open\\(\\) of object id"),
    ],
)
async def test_suite_catches_a_broken_backend(flaw: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_storage_backend(lambda: BrokenBackend(flaw))
