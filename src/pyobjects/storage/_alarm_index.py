"""The SQLiteBackend's index of pending alarms, ``@metadata.sqlite``: its SQL.

Table ``alarms`` holds one row per object with an alarm (a superset of the
truth, see :mod:`pyobjects.storage.sqlite`). Table ``alarm_retries`` holds,
per object, the failed attempts at its alarm: the alarm time they belong to,
how many failed and when the next is due. A row applies only while the
object's alarm is still set for that time, so a row left behind by a crash
can never give a new alarm an old count. Index files written before the
retries table existed get it when they are next opened (``CREATE TABLE IF
NOT EXISTS``).

Every function here raises ``sqlite3.Error``; the backend maps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import sqlite3

__all__ = [
    "INDEX_FILE",
    "INDEX_SCHEMA",
    "clear",
    "correct",
    "read",
    "record_retry",
    "set_time",
]

_Key = tuple[str, str]

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
