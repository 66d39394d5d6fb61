"""The SQLiteBackend's index of pending alarms, ``@metadata.sqlite``: its SQL.

Table ``alarms`` holds one row per object with an alarm (a superset of the
truth, see :mod:`pyobjects.storage.sqlite`). Table ``alarm_retries`` holds,
per object, the failed attempts at its alarm: the alarm time they belong to,
how many failed and when the next is due. A row applies only while the
object's alarm is still set for that time, so a row left behind by a crash
can never give a new alarm an old count. Index files written before the
retries table existed get it when they are next opened (``CREATE TABLE IF
NOT EXISTS``).

Every function here raises ``sqlite3.Error``; :class:`AlarmIndex`, the part
of :class:`~pyobjects.storage.SQLiteBackend` that keeps the index, maps it.
If the index cannot be read (a corrupt file, a directory that cannot be
written), the backend does not fail: it finds the alarms in the object
databases, which hold the truth, and writes a new index if it can.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import TYPE_CHECKING, Final

from pyobjects._errors import StorageError

from ._base import AlarmEntry, check_namespace, check_object_id
from ._history import fsync_directory
from ._sqlite_store import is_corrupt, read_alarm, storage_error

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "INDEX_FILE",
    "INDEX_SCHEMA",
    "AlarmIndex",
    "clear",
    "correct",
    "read",
    "record_retry",
    "set_time",
    "write_all",
]

_Key = tuple[str, str]

logger = logging.getLogger("pyobjects")

# The file name of the index; namespaces may not collide with it.
INDEX_FILE: Final = "@metadata.sqlite"  # "@" is outside the namespace alphabet

INDEX_SCHEMA: Final = {
    "alarms": "CREATE TABLE IF NOT EXISTS alarms (namespace TEXT NOT NULL,"
    " object_id TEXT NOT NULL, time_ms INTEGER NOT NULL,"
    " PRIMARY KEY (namespace, object_id)) WITHOUT ROWID",
    "alarm_retries": "CREATE TABLE IF NOT EXISTS alarm_retries"
    " (namespace TEXT NOT NULL, object_id TEXT NOT NULL,"
    " scheduled_ms INTEGER NOT NULL, retry_count INTEGER NOT NULL,"
    " retry_ms INTEGER NOT NULL, PRIMARY KEY (namespace, object_id)) WITHOUT ROWID",
}

_WHERE = " WHERE namespace = ? AND object_id = ?"


def set_time(index: sqlite3.Connection, key: _Key, time_ms: int) -> None:
    """Record that the object has an alarm at *time_ms*."""
    index.execute(
        "INSERT OR REPLACE INTO alarms (namespace, object_id, time_ms)"
        " VALUES (?, ?, ?)",
        (*key, time_ms),
    )


def clear(index: sqlite3.Connection, key: _Key) -> None:
    """Forget the object's alarm and its failed attempts."""
    index.execute("DELETE FROM alarms" + _WHERE, key)
    index.execute("DELETE FROM alarm_retries" + _WHERE, key)


def correct(index: sqlite3.Connection, key: _Key, time_ms: int) -> None:
    """The object's own database says the alarm is at *time_ms*."""
    index.execute("UPDATE alarms SET time_ms = ?" + _WHERE, (time_ms, *key))


def record_retry(
    index: sqlite3.Connection,
    key: _Key,
    *,
    scheduled_ms: int,
    retry_count: int,
    retry_ms: int,
) -> None:
    """Record failed attempts at the alarm set for *scheduled_ms*."""
    index.execute(
        "INSERT OR REPLACE INTO alarm_retries (namespace, object_id, scheduled_ms,"
        " retry_count, retry_ms) VALUES (?, ?, ?, ?, ?)",
        (*key, scheduled_ms, retry_count, retry_ms),
    )


def read(
    index: sqlite3.Connection,
) -> tuple[list[tuple[str, str, int]], dict[_Key, tuple[int, int, int]]]:
    """Return the alarm rows, and the retries by key (alarm time, count, next)."""
    rows = index.execute("SELECT namespace, object_id, time_ms FROM alarms").fetchall()
    retries = {
        (namespace, object_id): (scheduled, count, retry_ms)
        for namespace, object_id, scheduled, count, retry_ms in index.execute(
            "SELECT namespace, object_id, scheduled_ms, retry_count, retry_ms"
            " FROM alarm_retries"
        )
    }
    return rows, retries


def write_all(index: sqlite3.Connection, rows: list[tuple[str, str, int]]) -> None:
    """Replace every alarm row with *rows* (namespace, id, time), atomically."""
    index.execute("BEGIN IMMEDIATE")
    try:
        index.execute("DELETE FROM alarms")
        index.execute("DELETE FROM alarm_retries")
        index.executemany(
            "INSERT INTO alarms (namespace, object_id, time_ms) VALUES (?, ?, ?)", rows
        )
        index.execute("COMMIT")
    except BaseException:
        index.execute("ROLLBACK")
        raise


class AlarmIndex:
    """The alarm index part of :class:`~pyobjects.storage.SQLiteBackend` (a mixin)."""

    _directory: str
    _index: sqlite3.Connection | None
    _sync_directories: bool
    _read_only: bool  # pyobjects inspect: never write, never move a file

    def _acquire(self, key: _Key, *, create: bool) -> sqlite3.Connection | None:
        raise NotImplementedError

    def _connect(self, path: str, schema: Mapping[str, str]) -> sqlite3.Connection:
        raise NotImplementedError

    async def pending_alarms(self) -> list[AlarmEntry]:
        """Return every pending alarm, ordered by time, namespace and id.

        Each row of the index is checked against the object's own database:
        stale rows are dropped and outdated times corrected. A row whose
        object cannot be read is kept (the index errs on the side of firing).
        """
        try:
            index = self._index_connection(create=False)
            if index is None:
                return []
            rows, retries = read(index)
        except (StorageError, sqlite3.Error) as exc:
            # A corrupt or unreadable index must not stop the runtime: each
            # object's own database holds its alarm.
            return self._rebuild_index(exc)
        entries = []
        for namespace, object_id, time_ms in rows:
            try:
                check_namespace(namespace)
                check_object_id(object_id)
            except ValueError:
                continue  # not written by this backend
            key = (namespace, object_id)
            truth: int | None = time_ms
            try:
                conn = self._acquire(key, create=False)
                truth = None if conn is None else read_alarm(conn)
                if truth is None:
                    clear(index, key)
                elif truth != time_ms:
                    correct(index, key, truth)
            except (StorageError, sqlite3.Error):
                pass  # keep what the index says: it may fire, it cannot be lost
            if truth is None:
                continue
            scheduled, count, retry_ms = retries.get(key, (None, 0, None))
            if scheduled != truth:  # no failed attempt at this alarm
                count, retry_ms = 0, None
            entries.append(
                AlarmEntry(
                    namespace=namespace,
                    object_id=object_id,
                    time_ms=truth,
                    retry_count=count,
                    retry_ms=retry_ms,
                )
            )
        entries.sort(key=lambda e: (e.time_ms, e.namespace, e.object_id))
        return entries

    def _rebuild_index(self, error: BaseException) -> list[AlarmEntry]:
        """Find every alarm in the object databases; write a new index of them.

        A corrupt index is moved aside (to ``@metadata.sqlite.corrupt``)
        first. Retry counts kept only in the old index are lost: those alarms
        start again at retry 0. An object that cannot be read is skipped,
        and a new index that cannot be written is not fatal either (setting
        an alarm fails until it can be); both are logged.
        """
        path = os.path.join(self._directory, INDEX_FILE)
        if self._index is not None:
            index, self._index = self._index, None
            index.close()
        corrupt = is_corrupt(error) and not self._read_only
        logger.error(
            "the alarm index %s cannot be read (%s): finding the alarms in the "
            "object databases instead%s",
            path,
            error,
            f"; it is corrupt, so it is moved to {INDEX_FILE}.corrupt and rebuilt"
            if corrupt
            else "",
        )
        if corrupt:
            try:
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.replace(path + suffix, f"{path}.corrupt{suffix}")
            except OSError as exc:
                logger.error("cannot move the corrupt alarm index aside: %s", exc)
        entries = []
        for key in self._object_keys():
            try:
                conn = self._acquire(key, create=False)
                time_ms = None if conn is None else read_alarm(conn)
            except (StorageError, sqlite3.Error) as exc:
                logger.error("cannot read the alarm of %s/%s: %s", *key, exc)
                continue
            if time_ms is not None:
                entries.append(
                    AlarmEntry(namespace=key[0], object_id=key[1], time_ms=time_ms)
                )
        if self._read_only:
            entries.sort(key=lambda e: (e.time_ms, e.namespace, e.object_id))
            return entries
        try:
            new_index = self._index_connection(create=True)
            assert new_index is not None
            write_all(
                new_index, [(e.namespace, e.object_id, e.time_ms) for e in entries]
            )
        except (StorageError, sqlite3.Error) as exc:
            logger.error(
                "cannot write a new alarm index %s (%s): the %d alarms found "
                "fire in this run, and setting an alarm fails until it can be "
                "written",
                path,
                exc,
                len(entries),
            )
        entries.sort(key=lambda e: (e.time_ms, e.namespace, e.object_id))
        return entries

    def _object_keys(self) -> list[_Key]:
        """Every (namespace, id) with a database file in the directory."""
        keys = []
        try:
            namespaces = sorted(os.listdir(self._directory))
        except OSError:
            return []
        for namespace in namespaces:
            try:
                check_namespace(namespace)
                names = sorted(os.listdir(os.path.join(self._directory, namespace)))
            except (ValueError, OSError):
                continue  # the index, the lock, a file: not a namespace
            for name in names:
                object_id = name.removesuffix(".sqlite")
                try:
                    check_object_id(object_id)
                except ValueError:
                    continue
                keys.append((namespace, object_id))
        return keys

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
        """Remember failed attempts at an alarm, for a runtime that restarts.

        Kept in the alarm index next to the alarm (see ``pending_alarms()``).
        """
        check_namespace(namespace)
        check_object_id(object_id)
        index = self._index_connection(create=True)
        assert index is not None
        try:
            record_retry(
                index,
                (namespace, object_id),
                scheduled_ms=scheduled_ms,
                retry_count=retry_count,
                retry_ms=retry_ms,
            )
        except sqlite3.Error as exc:
            raise storage_error("write", "the alarm index", exc) from exc

    def _index_connection(self, *, create: bool) -> sqlite3.Connection | None:
        if self._index is not None:
            return self._index
        path = os.path.join(self._directory, INDEX_FILE)
        new_file = not os.path.exists(path)
        if new_file and not create:
            return None
        try:
            if new_file:
                os.makedirs(self._directory, exist_ok=True)
            self._index = self._connect(path, INDEX_SCHEMA)
            if new_file and self._sync_directories:
                fsync_directory(self._directory)
        except (OSError, sqlite3.Error) as exc:
            raise storage_error("open", "the alarm index", exc) from exc
        return self._index

    def _index_set(self, key: _Key, time_ms: int) -> None:
        index = self._index_connection(create=True)
        assert index is not None
        try:
            set_time(index, key, time_ms)
        except sqlite3.Error as exc:
            raise storage_error("write", "the alarm index", exc) from exc

    def _index_clear(self, key: _Key) -> None:
        try:
            index = self._index_connection(create=False)
            if index is not None:
                clear(index, key)
        except (StorageError, sqlite3.Error):
            # The commit itself succeeded; a row left behind is only stale,
            # and pending_alarms() drops it.
            pass
