"""The storage backend protocol: what a backend must do, and nothing more.

A backend is a per-object, ordered ``str -> bytes`` store with one alarm slot
and a remembered name, plus an index of pending alarms across objects. It
knows nothing about Python values, gates, limits or caching: all of that
lives once in the storage front end (:mod:`pyobjects.storage._api`).

Reads and commits are awaitable so that a server-backed store can suspend;
the built-in local backends complete them without suspending, which is what
makes a cached or local read atomic with the code around it (the input gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "AlarmEntry",
    "ListQuery",
    "ObjectStore",
    "StorageBackend",
    "WriteBatch",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListQuery:
    """A key range to list, already normalised by the front end.

    ``start`` is the inclusive lower bound, ``end`` the exclusive upper bound
    (``None`` means unbounded). With ``reverse`` the keys come in descending
    order and ``limit`` takes the largest keys of the range.
    """

    start: str | None = None
    end: str | None = None
    reverse: bool = False
    limit: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteBatch:
    """One atomic commit: applied all or nothing, in this order.

    1. If ``delete_all``, every key of the object is removed.
    2. ``writes`` are applied: a ``bytes`` value stores it, ``None`` deletes
       the key.
    3. If ``alarm_changed``, the alarm slot becomes ``alarm`` (epoch
       milliseconds, or ``None`` to clear it). ``delete_all`` alone does not
       touch the alarm; the front end says so explicitly.
    4. If ``name`` is not ``None``, it is remembered as the object's name.
    """

    delete_all: bool = False
    writes: Mapping[str, bytes | None] = field(default_factory=dict)
    alarm_changed: bool = False
    alarm: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmEntry:
    """A pending alarm in the cross-object index."""

    namespace: str
    object_id: str
    time_ms: int


class ObjectStore(Protocol):
    """The storage of one object, as handed out by :meth:`StorageBackend.open`."""

    async def get(self, keys: Sequence[str], /) -> dict[str, bytes]:
        """Return the stored value of each key that exists, in key order."""
        ...

    async def list(self, query: ListQuery, /) -> list[tuple[str, bytes]]:
        """Return the ``(key, value)`` pairs of the range, in the query's order."""
        ...

    async def get_alarm(self) -> int | None:
        """Return the alarm time in epoch milliseconds, or ``None``."""
        ...

    async def get_name(self) -> str | None:
        """Return the name remembered for this object, or ``None``."""
        ...

    async def commit(self, batch: WriteBatch, /) -> None:
        """Apply *batch* atomically and durably (at the backend's sync level).

        Raises:
            StorageError: If nothing of the batch was applied.
        """
        ...

    def close(self) -> None:
        """Release what this handle holds open; the data stays."""
        ...


class StorageBackend(Protocol):
    """A place where Durable Object storage lives.

    ``namespace`` is a string of ``[A-Za-z0-9_.-]`` (1 to 128 characters) and
    ``object_id`` 64 lowercase hex digits; backends check both before using
    them (as file names, for instance) and raise ``ValueError`` otherwise.
    """

    def open(self, namespace: str, object_id: str, /) -> ObjectStore:
        """Return a handle on one object's storage; cheap, creates nothing yet."""
        ...

    async def list_object_ids(self, namespace: str, /) -> list[str]:
        """Return the ids (hex, sorted) of the namespace's objects that hold data.

        An object holds data when it has at least one key or a pending alarm.
        """
        ...

    async def pending_alarms(self) -> list[AlarmEntry]:
        """Return every object's pending alarm, across namespaces."""
        ...

    async def aclose(self) -> None:
        """Close everything; the backend may not be used afterwards."""
        ...
