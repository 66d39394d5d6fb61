from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pyobjects.storage import MemoryBackend, SQLiteBackend, StorageBackend

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on both anyio backends."""
    return str(request.param)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageBackend]:
    """Each built-in storage backend, fresh for the test."""
    if request.param == "memory":
        yield MemoryBackend()
    else:
        yield SQLiteBackend(tmp_path / "data")
