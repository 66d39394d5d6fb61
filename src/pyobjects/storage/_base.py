"""The storage backend protocol: what a backend must do, and nothing more.

A backend is a per-object, ordered ``str -> bytes`` store with one alarm slot
and a remembered name, plus an index of pending alarms across objects. It
knows nothing about Python values, gates, limits or caching: all of that
lives once in the storage front end (:mod:`pyobjects.storage._api`).

Reads and commits are awaitable so that a server-backed store can suspend;
the built-in local backends complete them without suspending, which is what
makes a cached or local read atomic with the code around it (the input gate).

Two capabilities are optional, discovered on the store with ``getattr``:

- SQL (:class:`SqlObjectStore`): the store hands out the object's own
  ``sqlite3`` database; the front end runs user SQL on it inside the object's
  transaction, and :meth:`ObjectStore.commit` ends that transaction with the
  key-value batch, so both commit together. Without it, ``ctx.storage.sql``,
  ``kv`` and ``transaction_sync`` raise Cloudflare's "not backed by SQL"
  errors.
- Point-in-time recovery (:class:`PitrObjectStore`): bookmarks and restores.
"""

from __future__ import annotations

import string
import typing
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping, Sequence

__all__ = [
    "MAX_ALARM_MS",
    "RESERVED_SCHEMA",
    "USER_OBJECTS_WHERE",
    "AlarmEntry",
    "ListQuery",
    "ObjectStore",
    "PitrObjectStore",
    "SqlObjectStore",
    "StorageBackend",
    "WriteBatch",
    "check_batch",
    "check_namespace",
    "check_object_id",
]


# The latest alarm time set_alarm() accepts: that of the largest JavaScript
# Date (8.64e15 ms, in the year 275760), which every timer can sleep until.
MAX_ALARM_MS: typing.Final = 8_640_000_000_000_000
# What a backend must be able to store in its alarm slot: a signed 64-bit
# integer (SQLite's INTEGER), from 0.
_MAX_STORED_ALARM: typing.Final = 2**63 - 1


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


class WriteBatch(NamedTuple):
    """One atomic commit: applied all or nothing, in this order.

    1. If ``delete_all``, every key of the object is removed.
    2. ``writes`` are applied: a ``bytes`` value stores it, ``None`` deletes
       the key.
    3. If ``alarm_changed``, the alarm slot becomes ``alarm`` (epoch
       milliseconds, or ``None`` to clear it). ``delete_all`` alone does not
       touch the alarm; the front end says so explicitly.
    4. If ``name`` is not ``None``, it is remembered as the object's name.

    A ``NamedTuple`` rather than a frozen dataclass: one is built per commit,
    and this is about five times cheaper to build while just as immutable.
    """

    delete_all: bool = False
    writes: Mapping[str, bytes | None] = MappingProxyType({})
    alarm_changed: bool = False
    alarm: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmEntry:
    """A pending alarm in the cross-object index.

    ``time_ms`` is the time the alarm is set for. A backend that records
    failed attempts (the optional ``record_alarm_retry()``, see
    :class:`StorageBackend`) also returns how many attempts at that alarm
    failed (``retry_count``) and when the next one is due (``retry_ms``), so
    that a restarted runtime resumes the retries instead of starting over.
    """

    namespace: str
    object_id: str
    time_ms: int
    retry_count: int = 0
    retry_ms: int | None = None


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


class SqlObjectStore(ObjectStore, Protocol):
    """An object store that also holds an SQL database for the object."""

    def sql_connection(self, *, create: bool = True) -> sqlite3.Connection | None:
        """Return the object's database connection, opened in autocommit mode.

        The front end may leave a transaction open on it (``BEGIN``, then user
        statements and savepoints); the next :meth:`commit` must apply its
        batch inside that transaction and ``COMMIT`` it (all or nothing), and
        a backend must never close a connection while a transaction is open
        on it. Without *create*, return ``None`` if the object has no
        database yet. User SQL may not touch tables whose names start with
        ``_cf_``, so the backend may keep its own data there.
        """
        ...


class PitrObjectStore(ObjectStore, Protocol):
    """An object store that keeps history for point-in-time recovery.

    Bookmarks are strings that sort in time order. A scheduled restore takes
    effect the next time the backend's ``open()`` is called for the object
    (its next session); ``open()`` then sets ``restored_alarm`` on the
    store it returns to the restored alarm, so that the runtime reschedules
    it.
    """

    async def current_bookmark(self) -> str:
        """A bookmark for the state after the last commit."""
        ...

    async def bookmark_for_time(self, when_ms: int, now_ms: int, /) -> str:
        """A bookmark for the state at *when_ms* (``ValueError`` if too old)."""
        ...

    async def schedule_restore(self, bookmark: str, now_ms: int, /) -> str:
        """Restore to *bookmark* at the next session; return the undo bookmark."""
        ...


class StorageBackend(Protocol):
    """A place where Durable Object storage lives.

    ``namespace`` is a string of ``[A-Za-z0-9_.-]`` (1 to 128 characters) and
    ``object_id`` 64 lowercase hex digits; backends check both before using
    them (as file names, for instance) and raise ``ValueError`` otherwise.

    A backend may also offer ``async def record_alarm_retry(namespace,
    object_id, /, *, scheduled_ms, retry_count, retry_ms)``: the runtime calls
    it when an attempt at the alarm set for ``scheduled_ms`` failed, and
    ``pending_alarms()`` then returns ``retry_count`` and ``retry_ms`` with
    that alarm until the object's alarm changes. Without it, retries start
    over from 0 after a restart.
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
        """Release what the backend holds open (connections, files).

        The data stays. A runtime calls this when it stops; a backend may be
        used again afterwards (the built-in ones reopen lazily), which is how
        a test hands one backend to a second runtime to simulate a restart.
        """
        ...


# SQL-capable objects: the reserved tables a backend keeps in the object's
# database (user SQL cannot touch ``_cf_`` names), and the condition on
# ``sqlite_schema`` that selects the user's own tables, views, indexes and
# triggers (not the reserved ones, not SQLite's internal ``sqlite_*`` ones).
RESERVED_SCHEMA: Mapping[str, str] = MappingProxyType(
    {
        "_cf_KV": "CREATE TABLE IF NOT EXISTS _cf_KV"
        " (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        "_cf_METADATA": "CREATE TABLE IF NOT EXISTS _cf_METADATA"
        " (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    }
)
USER_OBJECTS_WHERE = (
    "name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
)

# Checks shared by the built-in backends.

# Checked with str.strip(), which removes every character of the set from
# both ends: a string made of them only is left empty. Several times cheaper
# than a regular expression, and a check runs each time an object is opened.
_NAMESPACE_CHARS = string.ascii_letters + string.digits + "_.-"
_HEX_DIGITS = "0123456789abcdef"


def check_namespace(namespace: object) -> None:
    """Raise ``ValueError`` unless *namespace* is a valid namespace name.

    Valid: 1 to 128 characters from ``A-Z a-z 0-9 _ . -``, not ``.`` or ``..``.
    """
    if (
        not isinstance(namespace, str)
        or not 0 < len(namespace) <= 128
        or namespace.strip(_NAMESPACE_CHARS)
        or namespace in {".", ".."}
    ):
        raise ValueError(f"invalid namespace name: {namespace!r}")


def check_object_id(object_id: object) -> None:
    """Raise ``ValueError`` unless *object_id* is 64 lowercase hex digits."""
    if (
        not isinstance(object_id, str)
        or len(object_id) != 64
        or object_id.strip(_HEX_DIGITS)
    ):
        raise ValueError(f"invalid object id: {object_id!r}")


def check_batch(batch: WriteBatch) -> None:
    """Raise ``TypeError`` unless every part of *batch* has the documented type.

    An alarm outside ``0..2**63 - 1`` (what SQLite's INTEGER holds) raises
    ``ValueError``; the storage front end refuses times past
    :data:`MAX_ALARM_MS` already at ``set_alarm()``, so only a direct caller
    of a backend sees this.
    """
    writes = typing.cast("Mapping[object, object]", batch.writes)
    for key, value in writes.items():
        if not isinstance(key, str):
            raise TypeError(f"storage keys must be str, not {type(key).__name__}")
        if value is not None and not isinstance(value, bytes):
            raise TypeError(
                f"storage values must be bytes or None, not {type(value).__name__}"
            )
    alarm: object = batch.alarm
    if batch.alarm_changed and alarm is not None:
        if not isinstance(alarm, int):
            raise TypeError(f"alarm must be int or None, not {type(alarm).__name__}")
        if not 0 <= alarm <= _MAX_STORED_ALARM:
            raise ValueError(f"alarm must be in 0..2**63 - 1 (epoch ms), not {alarm}")
    name: object = batch.name
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be str or None, not {type(name).__name__}")
