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
import logging
import os
import pathlib
import sqlite3
import time
import typing
from collections import OrderedDict
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from pyobjects._errors import StorageError

from ._alarm_index import AlarmIndex
from ._base import (
    RESERVED_SCHEMA,
    check_namespace,
    check_object_id,
)
from ._history import (
    Archiver,
    Commits,
    History,
    WalState,
    fsync_directory as _fsync_directory,
    read_pages,
    read_wal_commits,
)
from ._lock import DirectoryLock
from ._sqlite_store import (
    DELETE_META,
    GET_META,
    HOLDS_DATA,
    NO_PITR,
    SQLiteStore,
    read_alarm,
    storage_error,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


__all__ = ["SQLiteBackend"]

logger: logging.Logger = logging.getLogger("pyobjects")

_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
# Everything runs on the event-loop thread, so waiting long for a lock held
# by another process would stall every object; give up after a short while.
_BUSY_TIMEOUT = 1.0

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


def create_tables(conn: sqlite3.Connection, schema: Mapping[str, str]) -> None:
    """Create the tables of *schema* (name -> CREATE statement) that are missing."""
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


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


@typing.final
class SQLiteBackend(AlarmIndex):
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

    def open(self, namespace: str, object_id: str, /) -> SQLiteStore:
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
        store = SQLiteStore(self, key)
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
                (holds,) = conn.execute(HOLDS_DATA).fetchone()
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
            create_tables(conn, schema)
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
            raise storage_error("open", path, exc) from exc
        self._connections[key] = conn
        self._open_connections += 1
        if self._retention_ms:
            try:
                self._start_history(key, conn, path)
            except (sqlite3.Error, OSError) as exc:
                self._discard(key)
                raise storage_error("open", path, exc) from exc
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
        self._wal[key] = state
        wal = path + "-wal"
        leftover = os.path.exists(wal) and os.path.getsize(wal) > 0
        if leftover or not history.exists() or os.path.exists(history.marker):
            try:
                self._record_whole(key, conn, path, history, state)
            except (StorageError, sqlite3.Error, OSError) as exc:
                # The object's data does not need its history: reads and
                # writes go on, and the next archives try again.
                self._history_failed(key, state, exc)
        if key not in self._checked and not self._restoring:
            self._checked.add(key)
            row = conn.execute(GET_META, ("restore",)).fetchone()
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
            try:
                self._archive(key, conn)
            except (StorageError, sqlite3.Error, OSError) as exc:
                # The commit is durable: it must not be reported as failed.
                self._history_failed(key, state, exc)

    def _history_failed(self, key: _Key, state: WalState, exc: BaseException) -> None:
        """An archive failed (a full disk, an unwritable history file).

        Nothing is lost: either the WAL was not checkpointed (it keeps the
        commits until an archive succeeds) or the archiver left a marker, so
        the next archive records the database whole. Try again only after
        :data:`_ARCHIVE_EVERY` more commits, so that a full disk does not
        cost a failing archive per commit.
        """
        self._archiver.note_gap(key, exc)
        state.every = len(state.times) + _ARCHIVE_EVERY
        namespace, object_id = key
        logger.warning(
            "cannot write the point-in-time history of %s/%s (%s); its data is "
            "not affected, and the history is recorded whole once it can be "
            "written again (bookmarks fail until then)",
            namespace,
            object_id,
            exc,
        )

    def _history_for(self, key: _Key) -> tuple[sqlite3.Connection, History]:
        """The object's connection, with its history brought up to date."""
        if not self._retention_ms:
            raise StorageError(NO_PITR)
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
        row = conn.execute(GET_META, ("restore",)).fetchone()
        if row is None:
            return read_alarm(conn)
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
        restored.execute(DELETE_META, ("restore",))  # if the state had one
        self._archive(key, restored)
        self._archiver.wait(key)
        # "Just before the restore" is what the undo bookmark stands for.
        history.set_meta(f"undo:{before}", latest)
        alarm = read_alarm(restored)
        if alarm is None:
            self._index_clear(key)
        else:
            self._index_set(key, alarm)
        return alarm


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
