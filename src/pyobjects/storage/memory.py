"""A storage backend that keeps everything in process memory.

Each object that holds data gets a :class:`~sortedcontainers.SortedDict` of
its keys plus an alarm slot and a name slot. Objects without keys and without
an alarm hold no state at all: handles are lazy, and an object whose last key
is deleted (and whose alarm is cleared) is dropped, taking its remembered name
with it. A million objects touched without writes therefore cost nothing.

Objects may also hold an SQL database: an in-memory SQLite database per
object, created by its first SQL statement (``sql_connection``) and kept with
its data, so SQL works in unit tests without touching disk. Key-value data
stays in the sorted dict (nothing can observe the difference: user SQL may
not read ``_cf_`` tables); a commit ends the SQL transaction first and then
applies the key-value writes, which cannot fail, so a batch stays atomic.

Every operation completes without suspending.
"""

from __future__ import annotations

import sqlite3
import typing
import weakref
from itertools import islice
from typing import TYPE_CHECKING

from sortedcontainers import SortedDict

from pyobjects._errors import StorageError

from ._base import (
    RESERVED_SCHEMA,
    USER_OBJECTS_WHERE,
    AlarmEntry,
    check_batch,
    check_namespace,
    check_object_id,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._base import ListQuery, WriteBatch

__all__ = ["MemoryBackend"]


class _ObjectState:
    __slots__ = ("alarm", "data", "name", "sql")

    def __init__(self) -> None:
        self.data: SortedDict = SortedDict()
        self.alarm: int | None = None
        self.name: str | None = None
        self.sql: sqlite3.Connection | None = None

    def holds_data(self) -> bool:
        if self.data or self.alarm is not None:
            return True
        return self.sql is not None and _has_user_objects(self.sql)


def _has_user_objects(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM sqlite_schema WHERE {USER_OBJECTS_WHERE} LIMIT 1"
    ).fetchone()
    return row is not None


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for conn in connections:
        conn.close()


@typing.final
class MemoryBackend:
    """Keep Durable Object storage in memory, for tests and ephemeral state.

    :meth:`aclose` keeps the data and leaves the backend usable, so a test can
    hand the same instance to a second runtime to simulate a restart.
    """

    def __init__(self) -> None:
        # namespace -> object id -> state; only objects with a key or an alarm.
        self._namespaces: dict[str, dict[str, _ObjectState]] = {}
        # (namespace, object id) -> alarm time, for every object with an alarm.
        self._alarms: dict[tuple[str, str], int] = {}
        # (namespace, object id) -> (alarm time, failed attempts, next attempt),
        # see record_alarm_retry().
        self._retries: dict[tuple[str, str], tuple[int, int, int]] = {}
        # Every SQL database ever opened, closed when the backend is collected.
        self._sql_connections: list[sqlite3.Connection] = []
        weakref.finalize(self, _close_all, self._sql_connections)

    def open(self, namespace: str, object_id: str, /) -> _MemoryStore:
        """Return a handle on one object's storage; allocates nothing else."""
        check_namespace(namespace)
        check_object_id(object_id)
        return _MemoryStore(self, namespace, object_id)

    async def list_object_ids(self, namespace: str, /) -> list[str]:
        """Return the sorted ids of the namespace's objects with a key or an alarm."""
        check_namespace(namespace)
        objects = self._namespaces.get(namespace, {})
        return sorted(oid for oid, state in objects.items() if state.holds_data())

    async def list_namespaces(self) -> list[str]:
        """Return the sorted namespaces holding at least one object with data.

        Read-only (for inspection tools); not part of the backend protocol.
        """
        return sorted(self._namespaces)

    async def pending_alarms(self) -> list[AlarmEntry]:
        """Return every pending alarm, ordered by time, namespace and id."""
        entries = []
        for key, time_ms in sorted(
            self._alarms.items(), key=lambda item: (item[1], item[0])
        ):
            scheduled, count, retry_ms = self._retries.get(key, (None, 0, None))
            if scheduled != time_ms:  # no retry of this alarm recorded
                count, retry_ms = 0, None
            entries.append(
                AlarmEntry(
                    namespace=key[0],
                    object_id=key[1],
                    time_ms=time_ms,
                    retry_count=count,
                    retry_ms=retry_ms,
                )
            )
        return entries

    async def record_alarm_retry(
        self,
        namespace: str,
        object_id: str,
        /,
        *,
        scheduled_ms: int,
        retry_count: int,
        retry_ms: int,
    ) -> None:
        """Remember failed attempts at an alarm, for a runtime that restarts."""
        check_namespace(namespace)
        check_object_id(object_id)
        self._retries[namespace, object_id] = (scheduled_ms, retry_count, retry_ms)

    async def aclose(self) -> None:
        """Do nothing: the data stays in memory and the backend stays usable."""


_dict_set = dict.__setitem__


@typing.final
class _MemoryStore:
    __slots__ = ("_backend", "_namespace", "_object_id")

    # Never restored (no point-in-time recovery here). A class attribute, so
    # that the runtime's look-up after open() finds it instead of raising.
    restored_alarm: typing.ClassVar[bool] = False

    def __init__(self, backend: MemoryBackend, namespace: str, object_id: str) -> None:
        self._backend = backend
        self._namespace = namespace
        self._object_id = object_id

    def _state(self) -> _ObjectState | None:
        objects = self._backend._namespaces.get(self._namespace)
        return None if objects is None else objects.get(self._object_id)

    async def get(self, keys: Sequence[str], /) -> dict[str, bytes]:
        state = self._state()
        if state is None:
            return {}
        data = state.data
        return {key: data[key] for key in sorted(set(keys)) if key in data}

    async def list(self, query: ListQuery, /) -> list[tuple[str, bytes]]:
        state = self._state()
        if state is None:
            return []
        data = state.data
        keys = data.irange(
            query.start, query.end, inclusive=(True, False), reverse=query.reverse
        )
        if query.limit is not None:
            keys = islice(keys, max(query.limit, 0))
        return [(key, data[key]) for key in keys]

    async def get_alarm(self) -> int | None:
        state = self._state()
        return None if state is None else state.alarm

    async def get_name(self) -> str | None:
        state = self._state()
        return None if state is None else state.name

    async def commit(self, batch: WriteBatch, /) -> None:
        # Validate everything first: nothing below can fail half-way.
        check_batch(batch)
        self._commit_sync(batch)

    def _commit_sync(self, batch: WriteBatch, /) -> None:
        """:meth:`commit` as a plain function, for the storage front end.

        The output gate's fast path; its batches are valid by construction
        (the front end checked every key, value and alarm time at the call).
        """
        backend = self._backend
        objects = backend._namespaces.get(self._namespace)
        if objects is None:
            objects = backend._namespaces[self._namespace] = {}
        state = objects.get(self._object_id)
        if state is None:
            state = objects[self._object_id] = _ObjectState()
        if state.sql is not None and state.sql.in_transaction:
            # The only step that can fail (a deferred foreign key, say): run
            # it first, so that a failure leaves the key-value data untouched.
            try:
                state.sql.execute("COMMIT")
            except sqlite3.Error as exc:
                state.sql.execute("ROLLBACK")
                raise StorageError(
                    f"cannot commit object {self._namespace}/{self._object_id}: {exc}"
                ) from exc
        data = state.data
        if batch.delete_all:
            data.clear()
        for key, value in batch.writes.items():
            if value is None:
                data.pop(key, None)
            elif key in data:
                _dict_set(data, key, value)  # the key order stays: skip SortedDict's
            else:
                data[key] = value
        if batch.alarm_changed:
            state.alarm = batch.alarm
            slot = (self._namespace, self._object_id)
            backend._retries.pop(slot, None)  # a new alarm starts at retry 0
            if batch.alarm is None:
                backend._alarms.pop(slot, None)
            else:
                backend._alarms[slot] = batch.alarm
        if batch.name is not None:
            state.name = batch.name
        if not data and state.alarm is None and state.sql is None:
            # Empty objects keep no memory around (their name goes with them).
            del objects[self._object_id]
            if not objects:
                del backend._namespaces[self._namespace]

    def sql_connection(self, *, create: bool = True) -> sqlite3.Connection | None:
        """Return the object's in-memory SQL database (the SQL capability).

        Created on first use when *create*; otherwise ``None`` until then.
        """
        backend = self._backend
        objects = backend._namespaces.get(self._namespace)
        state = None if objects is None else objects.get(self._object_id)
        if state is not None and state.sql is not None:
            return state.sql
        if not create:
            return None
        if state is None:
            objects = backend._namespaces.setdefault(self._namespace, {})
            state = objects[self._object_id] = _ObjectState()
        # check_same_thread=False: only the runtime's event loop uses it, but
        # the finalizer that closes it may run on another thread (a server's
        # loop thread exits before the interpreter does).
        state.sql = sqlite3.connect(
            ":memory:", isolation_level=None, check_same_thread=False
        )
        # The reserved tables exist (empty) as in SQLiteBackend, so user SQL
        # gets the same "access ... is prohibited" errors on every backend.
        for statement in RESERVED_SCHEMA.values():
            state.sql.execute(statement)
        backend._sql_connections.append(state.sql)
        return state.sql

    def close(self) -> None:
        """Do nothing: a memory handle holds nothing open."""
