"""Read-only inspection of stored Durable Objects (``pyobjects inspect``).

Works through the backend protocol (``open``, ``list_object_ids`` and the
object store's ``list``/``get_alarm``/``get_name``), plus the built-in
backends' read-only ``list_namespaces()``. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._serialization import decode
from .storage._base import ListQuery

if TYPE_CHECKING:
    from .storage._base import StorageBackend

__all__ = [
    "ObjectSummary",
    "Undecodable",
    "dump_object",
    "find_object",
    "list_namespaces",
    "summarize",
]


class _ListsNamespaces(Protocol):
    async def list_namespaces(self) -> list[str]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectSummary:
    """What ``pyobjects inspect`` shows for one stored object."""

    namespace: str
    object_id: str
    name: str | None
    keys: int
    size: int  # bytes of keys (UTF-8) plus encoded values
    alarm: int | None  # epoch milliseconds


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A stored value the codec cannot read back."""

    size: int
    error: str

    def __repr__(self) -> str:
        return f"<undecodable: {self.size} bytes, {self.error}>"


async def list_namespaces(backend: StorageBackend) -> list[str]:
    """Return the namespaces of *backend*.

    Raises:
        TypeError: If the backend cannot list its namespaces.
    """
    lister = getattr(backend, "list_namespaces", None)
    if lister is None:
        raise TypeError(f"{type(backend).__name__} cannot list its namespaces")
    checked: _ListsNamespaces = backend  # type: ignore[assignment]
    return await checked.list_namespaces()


async def _summary(
    backend: StorageBackend, namespace: str, object_id: str
) -> tuple[ObjectSummary, list[tuple[str, bytes]]]:
    store = backend.open(namespace, object_id)
    try:
        items = await store.list(ListQuery())
        alarm = await store.get_alarm()
        name = await store.get_name()
    finally:
        store.close()
    size = sum(len(key.encode("utf-8", "surrogatepass")) + len(v) for key, v in items)
    summary = ObjectSummary(
        namespace=namespace,
        object_id=object_id,
        name=name,
        keys=len(items),
        size=size,
        alarm=alarm,
    )
    return summary, items


async def summarize(
    backend: StorageBackend, namespaces: list[str] | None = None
) -> list[ObjectSummary]:
    """Summarize every object holding data, namespace by namespace."""
    if namespaces is None:
        namespaces = await list_namespaces(backend)
    summaries = []
    for namespace in namespaces:
        for object_id in await backend.list_object_ids(namespace):
            summary, _ = await _summary(backend, namespace, object_id)
            summaries.append(summary)
    return summaries


async def find_object(backend: StorageBackend, namespace: str, ref: str) -> str | None:
    """Return the id of the object *ref* names: its 64 hex digits, or its name."""
    ids = await backend.list_object_ids(namespace)
    if ref.lower() in ids:
        return ref.lower()
    for object_id in ids:
        store = backend.open(namespace, object_id)
        try:
            if await store.get_name() == ref:
                return object_id
        finally:
            store.close()
    return None


async def dump_object(
    backend: StorageBackend, namespace: str, object_id: str
) -> tuple[ObjectSummary, list[tuple[str, Any]]]:
    """Return the object's summary and its keys with decoded values."""
    summary, items = await _summary(backend, namespace, object_id)
    decoded: list[tuple[str, Any]] = []
    for key, data in items:
        try:
            value = decode(data)
        except Exception as exc:  # any codec failure: show it, keep going
            value = Undecodable(len(data), f"{type(exc).__name__}: {exc}")
        decoded.append((key, value))
    return summary, decoded
