"""A storage backend on SQLite: one database file per object.

Layout under the backend's directory::

    @metadata.sqlite                 index of pending alarms across objects
    <namespace>/<object_id>.sqlite   one object: table _cf_KV, table _cf_METADATA

The object's file will also hold its user SQL tables, so the key-value data
lives in the reserved table ``_cf_KV`` (keys as the UTF-8 bytes of the key,
so SQLite's ``memcmp`` order is code point order) and the alarm time and name
in ``_cf_METADATA``. The index file's name starts with ``@``, which no
namespace name may contain, so the two can never collide. Files are created lazily by
the first commit that stores something; reading an object that has no file
reads nothing and creates nothing. At most ``max_open_connections`` object
databases are open at once (the least recently used are closed first, and
reopened when needed again).

Durability (``synchronous``; every database runs in WAL mode):

- ``"off"``: no fsync at all. A commit survives the process crashing, but an
  OS crash or power loss may lose recent commits and can corrupt a database.
- ``"normal"`` (default): the WAL is fsynced only at checkpoints. A commit
  survives the process crashing or being killed; an OS crash or power loss
  may roll back the most recent commits, but never corrupts a database.
- ``"full"``: the WAL is fsynced at every commit (plus, here, the directory
  when a new file is created), so a commit survives power loss and OS crashes.
- ``"extra"``: as ``"full"``; SQLite adds directory syncs in rollback-journal
  modes, which barely matters in WAL mode.

The default is ``"normal"`` because it costs no fsync per commit (commits run
on the event-loop thread, so an fsync stalls every object for its duration,
and ``"full"`` manages several times fewer commits per second) while it still
protects against what usually goes wrong with a server process: crashes,
kills and restarts. Choose ``"full"`` when losing the last commits to a power
cut is not acceptable.

Alarm index invariant: ``@metadata.sqlite`` is always a *superset* of the
truth kept in each object's ``_cf_METADATA``. A commit that sets an alarm
writes the index row *before* it commits the object's database; a commit that
clears one deletes the index row only *after*. A crash or a failed commit can
therefore leave a stale or outdated row, never a missing one, and
:meth:`SQLiteBackend.pending_alarms` checks every row against the object's
own database, dropping stale rows and correcting outdated times.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import time
import typing
from collections import OrderedDict
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from pyobjects._errors import StorageError

from ._alarm_index import (
    INDEX_FILE,
    INDEX_SCHEMA,
    clear as index_clear,
    correct as index_correct,
    read as index_read,
    record_retry as index_record_retry,
    set_time as index_set_time,
)
from ._base import (
    RESERVED_SCHEMA,
    USER_OBJECTS_WHERE,
    AlarmEntry,
    check_batch,
    check_namespace,
    check_object_id,
)
from ._history import (
    UNDO,
    Archiver,
    Commits,
    History,
    WalState,
    bookmark,
    fsync_directory as _fsync_directory,
    parse_bookmark,
    read_pages,
    read_wal_commits,
)
from ._lock import DirectoryLock

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._base import ListQuery, WriteBatch

__all__ = ["SQLiteBackend"]

_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
# Everything runs on the event-loop thread, so waiting long for a lock held
# by another process would stall every object; give up after a short while.
_BUSY_TIMEOUT = 1.0

_GET = "SELECT value FROM _cf_KV WHERE key = ?"
_PUT = "INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?, ?)"
_DELETE = "DELETE FROM _cf_KV WHERE key = ?"
_DELETE_ALL = "DELETE FROM _cf_KV"
_GET_META = "SELECT value FROM _cf_METADATA WHERE key = ?"
_SET_META = (
    "INSERT INTO _cf_METADATA (key, value) VALUES (?, ?) ON CONFLICT (key)"
    " DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value"
)
_DELETE_META = "DELETE FROM _cf_METADATA WHERE key = ?"
_HOLDS_DATA = (
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

_Key = tuple[str, str]
_WAL_HEADER_SIZE = 32

# Archive the WAL into the history after this many commits, or after about
# _ARCHIVE_BYTES of WAL, whichever comes first (and whenever a connection
# closes or a bookmark is asked for). The size is estimated from the bytes
# per commit of the previous archive: no system call per commit.
_ARCHIVE_EVERY = 1024
_ARCHIVE_BYTES = 8 << 20
# Before the first archive of a connection tells the bytes per commit.
_ARCHIVE_FIRST = 16
_NO_PITR = (
    "This Durable Object's storage back-end does not implement point-in-time "
    "recovery (SQLiteBackend was created with pitr_retention=0)."
)


class _Connection(sqlite3.Connection):
    """An object's connection; ``before_close`` runs first when it is closed.

    The SQL front end sets it to read its unfinished cursors to the end:
    closing a connection whose statements are still running would leave it
    open in SQLite (a "zombie") until they are gone, holding back every
    checkpoint of the file (the next open of the object needs one).
    """

    before_close: Callable[[], object] | None = None

    def close(self) -> None:
        hook, self.before_close = self.before_close, None
        if hook is not None:
            with contextlib.suppress(Exception):
                hook()
        super().close()


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


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


@typing.final
class SQLiteBackend:
    """Keep Durable Object storage in SQLite files under *directory*.

    Args:
        directory: Where the databases live; created when a runtime claims
            it (see :meth:`claim`) or on the first write.
        synchronous: SQLite's ``PRAGMA synchronous`` for every database; see
            the module documentation for what each level survives.
        max_open_connections: How many object databases may be open at once.
        pitr_retention: How far back point-in-time recovery reaches (a
            ``timedelta`` or seconds; default 30 days, as in Cloudflare). Each
            commit's changed pages are kept that long, compressed, in
            ``<object_id>.history`` next to the object's database; ``0``
            keeps no history and disables the bookmark API.

    Raises:
        ValueError: If ``synchronous``, ``max_open_connections`` or
            ``pitr_retention`` is invalid.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        synchronous: Literal["off", "normal", "full", "extra"] = "normal",
        max_open_connections: int = 256,
        pitr_retention: timedelta | float = timedelta(days=30),
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"invalid synchronous level: {synchronous!r}")
        if max_open_connections < 1:
            raise ValueError("max_open_connections must be at least 1")
        seconds = (
            pitr_retention.total_seconds()
            if isinstance(pitr_retention, timedelta)
            else pitr_retention
        )
        if not isinstance(typing.cast("object", seconds), (int, float)) or not (
            0 <= seconds < float("inf")
        ):
            raise ValueError(
                f"pitr_retention must be a duration >= 0, not {pitr_retention!r}"
            )
        self._retention_ms = int(seconds * 1000)
        self._now_ms: Callable[[], int] = _system_ms
        # Per open object database: its WAL as far as archived.
        self._wal: dict[_Key, WalState] = {}
        # Objects to restore when they next start, and objects whose restore
        # marker was already checked since this backend (re)started.
        self._pending_restores: set[_Key] = set()
        self._checked: set[_Key] = set()
        self._restoring = False
        # Writes archives into the histories on a worker thread. Unless
        # synchronous="off", histories are durable before their markers go.
        self._durable_history = synchronous != "off"
        self._archiver = Archiver(durable=self._durable_history)
        self._directory = os.fspath(directory)
        self._synchronous = _SYNCHRONOUS[synchronous]
        self._sync_directories = synchronous in {"full", "extra"}
        self._max_open = max_open_connections
        # Open object databases, least recently used first.
        self._connections: OrderedDict[_Key, sqlite3.Connection] = OrderedDict()
        self._index: sqlite3.Connection | None = None
        # Object connections currently open (for tests of the LRU bound).
        self._open_connections = 0
        self._lock = DirectoryLock(self._directory)
        self._read_only = False  # see read_only_backend()

    def open(self, namespace: str, object_id: str, /) -> _SQLiteStore:
        """Return a handle on one object's storage; creates no file.

        A restore scheduled with ``on_next_session_restore_bookmark`` is
        applied here: a new handle is the object's next session.

        Raises:
            ValueError: If the namespace or the id is malformed, or the
                namespace would collide with the alarm index file.
        """
        _check_name(namespace)
        check_object_id(object_id)
        key = (namespace, object_id)
        store = _SQLiteStore(self, key)
        if self._retention_ms and key not in self._checked:
            # First start since this backend (re)started: look for a restore
            # scheduled by an earlier process (opening checks the marker). A
            # file that cannot be opened fails later, at its first real use.
            with contextlib.suppress(StorageError):
                self._acquire(key, create=False)
        if key in self._pending_restores:
            store.restored_alarm = self._restore(key)
        return store

    def use_clock(self, now_ms: Callable[[], int], /) -> None:
        """Take commit times for the history from the runtime's clock."""
        self._now_ms = now_ms

    async def list_object_ids(self, namespace: str, /) -> list[str]:
        """Return the sorted ids of the namespace's objects with a key or an alarm."""
        _check_name(namespace)
        try:
            names = os.listdir(os.path.join(self._directory, namespace))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list namespace {namespace!r}: {exc}") from exc
        ids = []
        for name in sorted(names):
            object_id = name.removesuffix(".sqlite")
            if object_id == name:
                continue
            try:
                check_object_id(object_id)
            except ValueError:
                continue
            conn = self._acquire((namespace, object_id), create=False)
            if conn is None:  # pragma: no cover - deleted while listing
                continue
            try:
                (holds,) = conn.execute(_HOLDS_DATA).fetchone()
            except sqlite3.Error as exc:
                self._discard((namespace, object_id))
                raise StorageError(f"cannot read {name}: {exc}") from exc
            if holds:
                ids.append(object_id)
        return ids

    async def list_namespaces(self) -> list[str]:
        """Return the sorted namespaces that have at least one object file.

        Read-only (for ``pyobjects inspect``); not part of the backend
        protocol. An object file may hold no data any more; use
        :meth:`list_object_ids` to see which objects do.
        """
        try:
            with os.scandir(self._directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {self._directory}: {exc}") from exc
        found = []
        for entry in entries:
            try:
                _check_name(entry.name)
            except ValueError:
                continue  # the alarm index, or not ours
            if entry.is_dir() and any(
                name.endswith(".sqlite") for name in os.listdir(entry.path)
            ):
                found.append(entry.name)
        return found

    async def pending_alarms(self) -> list[AlarmEntry]:
        """Return every pending alarm, ordered by time, namespace and id.

        Each row of the index is checked against the object's own database:
        stale rows are dropped and outdated times corrected. A row whose
        object cannot be read is kept (the index errs on the side of firing).
        """
        index = self._index_connection(create=False)
        if index is None:
            return []
        try:
            rows, retries = index_read(index)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the alarm index: {exc}") from exc
        entries = []
        for namespace, object_id, time_ms in rows:
            try:
                _check_name(namespace)
                check_object_id(object_id)
            except ValueError:
                continue  # not written by this backend
            key = (namespace, object_id)
            truth: int | None = time_ms
            try:
                conn = self._acquire(key, create=False)
                truth = None if conn is None else _read_alarm(conn)
                if truth is None:
                    index_clear(index, key)
                elif truth != time_ms:
                    index_correct(index, key, truth)
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
        _check_name(namespace)
        check_object_id(object_id)
        index = self._index_connection(create=True)
        assert index is not None
        try:
            index_record_retry(
                index,
                (namespace, object_id),
                scheduled_ms=scheduled_ms,
                retry_count=retry_count,
                retry_ms=retry_ms,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write the alarm index: {exc}") from exc

    def claim(self) -> None:
        """Make this backend the one owner of its directory, until :meth:`aclose`.

        A :class:`~pyobjects.Runtime` claims its storage when it starts, so
        that a second runtime on the same directory, in this process or in
        another, is refused instead of running the same objects twice. The
        claim is an OS file lock on ``<directory>/@lock``: closing the
        backend releases it, and so does the process ending in any way.

        Raises:
            StorageInUseError: If another runtime holds the directory; the
                message names the directory and that process's PID.
        """
        self._lock.acquire()

    async def aclose(self) -> None:
        """Close every open database, finish the histories, release the directory.

        The directory is the one :meth:`claim` took. Nothing is lost: if the
        backend is used again (say, by a restarted runtime), databases are
        reopened as needed, as after an eviction.
        """
        while self._connections:
            self._discard(next(iter(self._connections)))
        # Every queued archive is written and the worker thread has ended.
        self._archiver.close()
        self._checked.clear()
        if self._index is not None:
            index, self._index = self._index, None
            index.close()
        self._lock.release()

    def _connect(self, path: str, schema: Mapping[str, str]) -> sqlite3.Connection:
        if self._read_only:
            # mode=ro: never a write, never a checkpoint (the owner's
            # history archiver must be the only one to fold the WAL).
            uri = pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=ro"
            return sqlite3.connect(
                uri, uri=True, timeout=_BUSY_TIMEOUT, isolation_level=None
            )
        conn = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT, isolation_level=None, factory=_Connection
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if self._retention_ms and schema is RESERVED_SCHEMA:
                # Only the history archiver checkpoints (see _history).
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            tables = {
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_schema WHERE type = 'table'"
                )
            }
            if not tables.issuperset(schema):
                conn.execute("BEGIN IMMEDIATE")
                for statement in schema.values():
                    conn.execute(statement)
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _acquire(self, key: _Key, *, create: bool) -> sqlite3.Connection | None:
        """Return the object's open connection, opening it if needed.

        Without *create*, return ``None`` if the object has no file yet.
        """
        conn = self._connections.get(key)
        if conn is not None:
            self._connections.move_to_end(key)
            return conn
        namespace, object_id = key
        directory = os.path.join(self._directory, namespace)
        path = os.path.join(directory, object_id + ".sqlite")
        new_file = not os.path.exists(path)
        if new_file and not create:
            return None
        try:
            if new_file:
                new_directory = not os.path.isdir(directory)
                os.makedirs(directory, exist_ok=True)
                if new_directory and self._sync_directories:
                    _fsync_directory(self._directory)
            conn = self._connect(path, RESERVED_SCHEMA)
            if new_file and self._sync_directories:
                _fsync_directory(directory)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc
        self._connections[key] = conn
        self._open_connections += 1
        if self._retention_ms:
            try:
                self._start_history(key, conn, path)
            except BaseException:
                self._discard(key)
                raise
        if len(self._connections) > self._max_open:
            # Close the least recently used, except those inside an SQL
            # transaction (closing would roll back uncommitted SQL).
            for old in list(self._connections):
                if len(self._connections) <= self._max_open or old == key:
                    break
                if not self._connections[old].in_transaction:
                    self._discard(old)
        return conn

    def _discard(self, key: _Key) -> None:
        """Close the object's connection, if open (rolling back any transaction)."""
        conn = self._connections.get(key)
        if conn is not None and key in self._wal:
            if conn.in_transaction:
                # Closing would roll back too, and then fold the WAL into the
                # database: its commits must be archived first.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            try:
                self._archive(key, conn)
            except (StorageError, sqlite3.Error, OSError) as exc:
                # Closing folds the WAL into the database anyway: the next
                # open must record the whole database.
                with contextlib.suppress(OSError):
                    self._archiver.mark_broken(key, self._paths(key)[1], exc)
        conn = self._connections.pop(key, None)
        self._wal.pop(key, None)
        if conn is not None:
            self._open_connections -= 1
            conn.close()

    # -- point-in-time recovery -------------------------------------------------

    def _paths(self, key: _Key) -> tuple[str, History]:
        namespace, object_id = key
        base = os.path.join(self._directory, namespace, object_id)
        history = History(
            base + ".history", namespace, object_id, durable=self._durable_history
        )
        return base + ".sqlite", history

    def _start_history(self, key: _Key, conn: sqlite3.Connection, path: str) -> None:
        """Bring the history up to date with a database that was just opened.

        A WAL left over (an unclean shutdown: its commit times were lost), a
        marker (the process stopped before the history had every commit the
        database has, see _history) or a database without history is
        recorded whole, as one commit now.
        """
        _, history = self._paths(key)
        # Archives still being written from before this database was closed:
        # once they are, a marker can only be a crash's (or a failure's).
        self._archiver.wait(key)
        state = WalState(every=_ARCHIVE_FIRST)
        wal = path + "-wal"
        leftover = os.path.exists(wal) and os.path.getsize(wal) > 0
        if leftover or not history.exists() or os.path.exists(history.marker):
            self._record_whole(key, conn, path, history, state)
        self._wal[key] = state
        if key not in self._checked and not self._restoring:
            self._checked.add(key)
            row = conn.execute(_GET_META, ("restore",)).fetchone()
            if row is not None:
                self._pending_restores.add(key)

    def _cutoff(self) -> int:
        return self._now_ms() - self._retention_ms

    def _record_whole(
        self,
        key: _Key,
        conn: sqlite3.Connection,
        path: str,
        history: History,
        state: WalState,
    ) -> None:
        """Queue the whole database as one commit now (heals any gap)."""
        archiver = self._archiver
        archiver.reserve(key, history)  # the marker, before the checkpoint
        try:
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise StorageError(f"cannot checkpoint {path}: the database is busy")
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            pages = read_pages(path, page_size)
        except BaseException as exc:
            archiver.abandon(key, exc)
            raise
        archiver.submit(
            key,
            history,
            [(self._now_ms(), len(pages), pages)],
            page_size,
            self._cutoff(),
            whole=True,
        )
        state.times = []
        state.offset = 0
        state.done = None

    def _archive(self, key: _Key, conn: sqlite3.Connection) -> None:
        """Queue the WAL's new commits for the history, then checkpoint.

        The worker thread compresses and writes them (see _history for the
        ordering that keeps a crash from leaving a gap).
        """
        state = self._wal[key]
        path, history = self._paths(key)
        if self._archiver.needs_whole(key):
            # An earlier archive failed: the history has a gap.
            self._record_whole(key, conn, path, history, state)
            return
        commits, end, page_size, salts = read_wal_commits(
            path + "-wal", state.offset, state.done
        )
        archiver = self._archiver
        records: Commits = []
        if commits:
            per_commit = (end - max(state.offset, _WAL_HEADER_SIZE)) // len(commits)
            state.every = max(1, min(_ARCHIVE_EVERY, _ARCHIVE_BYTES // per_commit))
            times = state.times
            now = self._now_ms()
            records = [
                (times[i] if i < len(times) else now, c.db_pages, c.pages)
                for i, c in enumerate(commits)
            ]
            archiver.reserve(key, history)  # the marker, before the checkpoint
        state.times = []
        state.offset = end
        try:
            # RESTART, not TRUNCATE: the next commits overwrite the WAL from
            # the start (new salts) instead of growing a fresh file page by
            # page. It also syncs them (unless synchronous="off"): queued only
            # now, the history never gets ahead of what a power loss keeps.
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except BaseException as exc:
            if commits:
                archiver.abandon(key, exc)  # the next archive records it whole
            raise
        if commits:
            archiver.submit(key, history, records, page_size, self._cutoff())
        if not busy:
            state.offset = 0
            state.done = salts

    def _committed(self, key: _Key, conn: sqlite3.Connection) -> None:
        """A commit succeeded: note its time, archive now and then."""
        state = self._wal.get(key)
        if state is None:
            return
        state.times.append(self._now_ms())
        if len(state.times) >= state.every:
            self._archive(key, conn)

    def _history_for(self, key: _Key) -> tuple[sqlite3.Connection, History]:
        """The object's connection, with its history brought up to date."""
        if not self._retention_ms:
            raise StorageError(_NO_PITR)
        conn = self._acquire(key, create=True)
        assert conn is not None
        if conn.in_transaction:
            raise StorageError("cannot read the history inside an open transaction")
        try:
            self._archive(key, conn)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot update the history: {exc}") from exc
        # Read only what every commit so far has been written to.
        error = self._archiver.wait(key)
        if error is not None:
            raise StorageError(f"cannot update the history: {error}") from error
        return conn, self._paths(key)[1]

    def _restore(self, key: _Key) -> int | None:
        """Apply a scheduled restore; return the alarm of the restored state."""
        self._pending_restores.discard(key)
        conn, history = self._history_for(key)
        row = conn.execute(_GET_META, ("restore",)).fetchone()
        if row is None:
            return _read_alarm(conn)
        target, before = (int(x) for x in str(row[0]).split(":"))
        latest = history.latest()
        path, _ = self._paths(key)
        self._discard(key)
        self._archiver.wait(key)
        temporary = path + ".restore"
        try:
            history.rebuild(target, temporary)
            # The history has the pages of the restored state only under
            # older commits, and a later rebuild would mix them with newer
            # versions of the pages that the restore did not change: the
            # marker makes the next open (below, or after a crash) record the
            # restored database whole.
            self._archiver.mark_broken(key, history, StorageError("restored"))
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
            os.replace(temporary, path)
            _fsync_directory(os.path.dirname(path))
        except OSError as exc:
            raise StorageError(f"cannot restore {path}: {exc}") from exc
        self._restoring = True
        try:
            restored = self._acquire(key, create=True)
        finally:
            self._restoring = False
        assert restored is not None
        restored.execute(_DELETE_META, ("restore",))  # if the state had one
        self._archive(key, restored)
        self._archiver.wait(key)
        # "Just before the restore" is what the undo bookmark stands for.
        history.set_meta(f"undo:{before}", latest)
        alarm = _read_alarm(restored)
        if alarm is None:
            self._index_clear(key)
        else:
            self._index_set(key, alarm)
        return alarm

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
                _fsync_directory(self._directory)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the alarm index: {exc}") from exc
        return self._index

    def _index_set(self, key: _Key, time_ms: int) -> None:
        index = self._index_connection(create=True)
        assert index is not None
        try:
            index_set_time(index, key, time_ms)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write the alarm index: {exc}") from exc

    def _index_clear(self, key: _Key) -> None:
        try:
            index = self._index_connection(create=False)
            if index is not None:
                index_clear(index, key)
        except (StorageError, sqlite3.Error):
            # The commit itself succeeded; a row left behind is only stale,
            # and pending_alarms() drops it.
            pass


def read_only_backend(directory: str | os.PathLike[str]) -> SQLiteBackend:
    """Return a backend that only reads *directory* (for ``pyobjects inspect``).

    Its databases are opened read-only (``mode=ro``) and without history, so
    it never writes nor checkpoints a WAL: it may read while another process
    owns the directory. SQLite's WAL mode gives it a consistent snapshot per
    statement without blocking the owner's commits.
    """
    backend = SQLiteBackend(directory, pitr_retention=0)
    backend._read_only = True
    return backend


def _check_name(namespace: str) -> None:
    check_namespace(namespace)


def _read_alarm(conn: sqlite3.Connection) -> int | None:
    row = conn.execute(_GET_META, ("alarm",)).fetchone()
    return None if row is None else int(row[0])


@typing.final
class _SQLiteStore:
    __slots__ = ("_backend", "_key", "restored_alarm")

    def __init__(self, backend: SQLiteBackend, key: _Key) -> None:
        self._backend = backend
        self._key = key
        # Set (to the restored alarm, maybe None) when opening restored the
        # object; the runtime reschedules its alarm then.
        self.restored_alarm: int | bool | None = False

    def _fail(self, what: str, exc: sqlite3.Error) -> StorageError:
        namespace, object_id = self._key
        return StorageError(f"cannot {what} object {namespace}/{object_id}: {exc}")

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
            return _read_alarm(conn)
        except sqlite3.Error as exc:
            raise self._fail("read", exc) from exc

    async def get_name(self) -> str | None:
        conn = self._backend._acquire(self._key, create=False)
        if conn is None:
            return None
        try:
            row = conn.execute(_GET_META, ("name",)).fetchone()
        except sqlite3.Error as exc:
            raise self._fail("read", exc) from exc
        return None if row is None else str(row[0])

    async def commit(self, batch: WriteBatch, /) -> None:
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
                        conn.execute(_DELETE_META, ("alarm",))
                    else:
                        conn.execute(_SET_META, ("alarm", alarm))
                if name is not None:
                    conn.execute(_SET_META, ("name", name))
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
            raise StorageError(_NO_PITR)
        if when_ms < now_ms - backend._retention_ms:
            raise ValueError(
                "get_bookmark_for_time() needs a time within the last "
                f"{backend._retention_ms / 86_400_000:g} days (pitr_retention)"
            )
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
            raise StorageError(_NO_PITR)
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
            conn.execute(_SET_META, ("restore", f"{seq}:{latest}"))
        except sqlite3.Error as exc:
            raise self._fail("schedule a restore of", exc) from exc
        backend._pending_restores.add(key)
        backend._committed(key, conn)
        return bookmark(*key, latest, UNDO)

    def close(self) -> None:
        """Close this object's database connection; the data stays."""
        self._backend._discard(self._key)
