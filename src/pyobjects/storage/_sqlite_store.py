"""One object's handle on a :class:`~pyobjects.storage.SQLiteBackend` (its KV API).

The backend (:mod:`pyobjects.storage.sqlite`) owns the connections, the
point-in-time history and the alarm index; a store reads and commits one
object's key-value data, alarm and name through it, and maps every
``sqlite3.Error`` to a :class:`~pyobjects.StorageError` (a
:class:`~pyobjects.StorageFullError` when the disk or the database is full).
"""

from __future__ import annotations

import errno
import sqlite3
import typing
from typing import TYPE_CHECKING, Protocol

from pyobjects._errors import StorageError, StorageFullError

from ._base import USER_OBJECTS_WHERE, check_batch
from ._history import UNDO, bookmark, check_bookmark_time, parse_bookmark

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._base import ListQuery, WriteBatch
    from ._history import History

__all__ = ["SQLiteStore"]

_Key = tuple[str, str]


class StoreBackend(Protocol):
    """What a store uses of its :class:`~pyobjects.storage.SQLiteBackend`.

    A protocol, so that this module need not import the backend's (which
    imports this one).
    """

    _retention_ms: int
    _pending_restores: set[_Key]

    def _acquire(self, key: _Key, *, create: bool) -> sqlite3.Connection | None: ...
    def _discard(self, key: _Key) -> None: ...
    def _committed(self, key: _Key, conn: sqlite3.Connection) -> None: ...
    def _history_for(self, key: _Key) -> tuple[sqlite3.Connection, History]: ...
    def _index_set(self, key: _Key, time_ms: int) -> None: ...
    def _index_clear(self, key: _Key) -> None: ...


_GET = "SELECT value FROM _cf_KV WHERE key = ?"
_PUT = "INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?, ?)"
_DELETE = "DELETE FROM _cf_KV WHERE key = ?"
_DELETE_ALL = "DELETE FROM _cf_KV"
GET_META = "SELECT value FROM _cf_METADATA WHERE key = ?"
SET_META = (
    "INSERT INTO _cf_METADATA (key, value) VALUES (?, ?) ON CONFLICT (key)"
    " DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value"
)
DELETE_META = "DELETE FROM _cf_METADATA WHERE key = ?"
HOLDS_DATA = (
    "SELECT EXISTS (SELECT 1 FROM _cf_KV)"
    " OR EXISTS (SELECT 1 FROM _cf_METADATA WHERE key = 'alarm')"
    f" OR EXISTS (SELECT 1 FROM sqlite_schema WHERE {USER_OBJECTS_WHERE})"
)
_LIST = {
    (start, end, reverse): "SELECT key, value FROM _cf_KV"
    + (" WHERE key >= ?" if start else "")
    + ((" AND" if start else " WHERE") + " key < ?" if end else "")
    + (" ORDER BY key DESC" if reverse else " ORDER BY key")
    + " LIMIT ?"
    for start in (False, True)
    for end in (False, True)
    for reverse in (False, True)
}

NO_PITR = (
    "This Durable Object's storage back-end does not implement point-in-time "
    "recovery (SQLiteBackend was created with pitr_retention=0)."
)


def _encode(key: str) -> bytes:
    # surrogatepass keeps every Python str storable and code point ordered.
    return key.encode("utf-8", "surrogatepass")


def _decode(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


def _encode_writes(
    writes: Mapping[str, bytes | None],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes]]]:
    """Split *writes* into encoded puts and deletes, checking the types."""
    puts = []
    deletes = []
    for key, value in typing.cast("Mapping[object, object]", writes).items():
        if not isinstance(key, str):
            raise TypeError(f"storage keys must be str, not {type(key).__name__}")
        if value is None:
            deletes.append((_encode(key),))
        elif isinstance(value, bytes):
            puts.append((_encode(key), value))
        else:
            raise TypeError(
                f"storage values must be bytes or None, not {type(value).__name__}"
            )
    return puts, deletes


# OSError numbers that mean "no room": no space left, over the disk quota.
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def is_full(exc: BaseException) -> bool:
    """True if *exc* says the disk or the database is full."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_corrupt(exc: BaseException) -> bool:
    """True if *exc* (or what caused it) says a file is no sound database."""
    cause: BaseException | None = exc
    while cause is not None:
        code = getattr(cause, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _CORRUPT_CODES:
            return True
        cause = cause.__cause__
    return False


def storage_error(action: str, target: str, exc: BaseException) -> StorageError:
    """The typed error for *exc*, raised while trying to *action* *target*.

    A full disk or database becomes :class:`~pyobjects.StorageFullError`,
    anything else a plain :class:`~pyobjects.StorageError`.
    """
    if is_full(exc):
        return StorageFullError(action=action, target=target, detail=str(exc))
    return StorageError(f"cannot {action} {target}: {exc}")


def read_alarm(conn: sqlite3.Connection) -> int | None:
    """Return the alarm time kept in the object's own database."""
    row = conn.execute(GET_META, ("alarm",)).fetchone()
    return None if row is None else int(row[0])


@typing.final
class SQLiteStore:
    """One object's storage in a :class:`~pyobjects.storage.SQLiteBackend`."""

    __slots__ = ("_backend", "_key", "restored_alarm")

    def __init__(self, backend: StoreBackend, key: _Key) -> None:
        self._backend = backend
        self._key = key
        # Set (to the restored alarm, maybe None) when opening restored the
        # object; the runtime reschedules its alarm then.
        self.restored_alarm: int | bool | None = False

    def _fail(self, what: str, exc: sqlite3.Error) -> StorageError:
        namespace, object_id = self._key
        return storage_error(what, f"object {namespace}/{object_id}", exc)

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - SQLite rolled back already
                # Closing the connection rolls back too.
                self._backend._discard(self._key)

    async def get(self, keys: Sequence[str], /) -> dict[str, bytes]:
        conn = self._backend._acquire(self._key, create=False)
        if conn is None:
            return {}
        result = {}
        try:
            for key in sorted(set(keys)):
                row = conn.execute(_GET, (_encode(key),)).fetchone()
                if row is not None:
                    result[key] = row[0]
        except sqlite3.Error as exc:
            raise self._fail("read", exc) from exc
        return result

    async def list(self, query: ListQuery, /) -> list[tuple[str, bytes]]:
        conn = self._backend._acquire(self._key, create=False)
        if conn is None:
            return []
        start, end = query.start, query.end
        params: list[bytes | int] = []
        if start is not None:
            params.append(_encode(start))
        if end is not None:
            params.append(_encode(end))
        params.append(-1 if query.limit is None else max(query.limit, 0))
        sql = _LIST[start is not None, end is not None, query.reverse]
        try:
            rows = conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._fail("list", exc) from exc
        return [(_decode(key), value) for key, value in rows]

    async def get_alarm(self) -> int | None:
        conn = self._backend._acquire(self._key, create=False)
        if conn is None:
            return None
        try:
            return read_alarm(conn)
        except sqlite3.Error as exc:
            raise self._fail("read", exc) from exc

    async def get_name(self) -> str | None:
        conn = self._backend._acquire(self._key, create=False)
        if conn is None:
            return None
        try:
            row = conn.execute(GET_META, ("name",)).fetchone()
        except sqlite3.Error as exc:
            raise self._fail("read", exc) from exc
        return None if row is None else str(row[0])

    async def commit(self, batch: WriteBatch, /) -> None:
        self._commit_sync(batch)

    def _commit_sync(self, batch: WriteBatch, /) -> None:
        """:meth:`commit` as a plain function (the output gate's fast path)."""
        puts, deletes = _encode_writes(batch.writes)
        alarm_changed, alarm, name = batch.alarm_changed, batch.alarm, batch.name
        if alarm_changed or name is not None:
            check_batch(batch)
        sets_alarm = alarm_changed and alarm is not None
        backend = self._backend
        key = self._key
        conn = backend._acquire(key, create=False)
        if conn is None and not puts and not sets_alarm:
            return  # would leave the object empty: no file needed
        if sets_alarm:
            assert alarm is not None
            # Index first, object second: the index stays a superset.
            backend._index_set(key, alarm)
        if conn is None:
            conn = backend._acquire(key, create=True)
            assert conn is not None
        try:
            in_sql = conn.in_transaction  # SQL of this batch awaits its COMMIT
            if (
                not in_sql
                and len(puts) + len(deletes) == 1
                and not batch.delete_all
                and not alarm_changed
                and name is None
            ):
                # The hot path: one statement is a transaction of its own.
                conn.execute(*((_PUT, puts[0]) if puts else (_DELETE, deletes[0])))
            else:
                if not in_sql:
                    conn.execute("BEGIN IMMEDIATE")
                if batch.delete_all:
                    conn.execute(_DELETE_ALL)
                if deletes:
                    conn.executemany(_DELETE, deletes)
                if puts:
                    conn.executemany(_PUT, puts)
                if alarm_changed:
                    if alarm is None:
                        conn.execute(DELETE_META, ("alarm",))
                    else:
                        conn.execute(SET_META, ("alarm", alarm))
                if name is not None:
                    conn.execute(SET_META, ("name", name))
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._fail("commit to", exc) from exc
        except BaseException:
            self._rollback(conn)
            raise
        if alarm_changed and alarm is None:
            # Object first, index second: the index stays a superset.
            backend._index_clear(key)
        backend._committed(key, conn)

    def sql_connection(self, *, create: bool = True) -> sqlite3.Connection | None:
        """Return the object's database connection (the SQL capability).

        The storage front end runs user SQL on it, inside a transaction that
        :meth:`commit` completes. Without *create*, ``None`` if the object
        has no file yet.
        """
        return self._backend._acquire(self._key, create=create)

    async def current_bookmark(self) -> str:
        """A bookmark for the state after the last commit."""
        backend = self._backend
        _, history = backend._history_for(self._key)
        return bookmark(*self._key, history.latest())

    async def bookmark_for_time(self, when_ms: int, now_ms: int) -> str:
        """A bookmark for the state at *when_ms* (epoch ms)."""
        backend = self._backend
        if not backend._retention_ms:
            raise StorageError(NO_PITR)
        check_bookmark_time(backend._retention_ms, when_ms, now_ms)
        _, history = backend._history_for(self._key)
        seq = history.seq_for_time(min(when_ms, now_ms))
        if seq is None:
            raise ValueError(
                "get_bookmark_for_time(): this object has no history that old "
                "(it was created later, or history was kept only since then)"
            )
        return bookmark(*self._key, seq)

    async def schedule_restore(self, text: str, now_ms: int) -> str:
        """Restore to *text* when the object next starts; return the undo bookmark."""
        backend = self._backend
        key = self._key
        if not backend._retention_ms:
            raise StorageError(NO_PITR)
        seq, kind = parse_bookmark(*key, text)
        conn, history = backend._history_for(key)
        if kind == UNDO:
            undone = history.get_meta(f"undo:{seq}")
            seq = history.latest() if undone is None else undone
        if not history.has(seq):
            raise ValueError(
                f"bookmark {text!r} is older than the history kept (pitr_retention)"
            )
        latest = history.latest()
        try:
            conn.execute(SET_META, ("restore", f"{seq}:{latest}"))
        except sqlite3.Error as exc:
            raise self._fail("schedule a restore of", exc) from exc
        backend._pending_restores.add(key)
        backend._committed(key, conn)
        return bookmark(*key, latest, UNDO)

    def close(self) -> None:
        """Close this object's database connection; the data stays."""
        self._backend._discard(self._key)
