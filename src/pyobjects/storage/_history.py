"""Point-in-time recovery for :class:`~pyobjects.storage.SQLiteBackend`.

Each object database runs in WAL mode with automatic checkpoints off. Every
committed transaction appends the new versions of the pages it changed to the
WAL; before the WAL is checkpointed (folded into the database file), those
page versions are archived into the object's history file,
``<namespace>/<object_id>.history``, one row per page version, tagged with a
commit sequence number and the commit time. The state after any archived
commit is then exact: for every page, its latest version at or before that
commit, up to the database size that commit recorded. This is how
Cloudflare's own PITR works (a log of WAL frames), done per object.

History older than the retention window is folded away: only the newest
version of each page at the cutoff is kept, so any commit since the cutoff
can still be rebuilt. After an unclean shutdown the WAL may hold commits
whose times were never recorded; they are not parsed: the recovered database
is recorded whole, as one commit at the time of recovery.

WAL format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic,
version, page size, checkpoint sequence, two salts, two checksums), then
frames of a 24-byte header (page number, database size in pages for the last
frame of a commit or 0, the two salts, two checksums) and one page.

Archiving off the event loop
----------------------------

Compressing the pages and writing them into the history file is the
expensive part of an archive, so an :class:`Archiver` (one per backend) does
it on a worker thread. The event loop's thread only reads the new WAL frames
into memory and checkpoints. The history then lags the database for a while,
and a crash in that window must not leave a silent gap (a gap makes every
later rebuild mix page versions). The ordering that prevents it:

1. The loop reads the new commits of the WAL into memory.
2. The loop *reserves* the job: the object counts one more job in flight,
   and if no marker file ``<object_id>.history-pending`` exists (the object
   had nothing in flight), it is created, and unless the backend runs with
   ``synchronous="off"``, its directory is fsynced.
3. The loop checkpoints the WAL (``RESTART``): from here on the database
   file holds commits that the history does not have yet. Unless
   ``synchronous="off"``, the checkpoint also syncs them to disk.
4. The loop queues the job (its pages, commit times and the pruning
   cutoff); only now may the worker write it, so the history never holds a
   commit that a power loss could take from the database.
5. The worker appends the job in one transaction of the history file; unless
   ``synchronous="off"``, the history runs with ``synchronous=FULL``, so the
   transaction is on disk when ``COMMIT`` returns.
6. When the object has no job in flight any more (and none failed), the
   worker deletes the marker.

So a marker exists, durably, before any commit the history lacks reaches the
database file, and goes away only after the history has them all, durably;
a process crash, an OS crash or a power loss at any point leaves either a
complete history or a marker. (With ``synchronous="off"`` nothing is synced:
a process crash is covered, an OS crash or a power loss is not, as for the
database itself.)
When a database is opened and the backend has no job of its own in flight
for it, a marker (like a left-over WAL, or a missing history) means the
history may lack commits: the database is recorded whole, as one commit at
that time, which makes every later state exact again. Only the states between
the last archived commit and that moment are missing (a bookmark for a time
in between gives the last archived commit). A lost ``unlink`` only leads to
one redundant whole record.

A failed append (a full disk, say) leaves the marker and makes the worker
drop that object's later jobs: they would follow a gap. The loop's next
archive of the object records the whole database instead, which heals the
history; reading the history (bookmarks, restores) waits for the object's
jobs and raises :class:`StorageError` if the history still has a gap.

Jobs are applied in the order they were queued, so the commits of one
object reach its history in commit order; the worker takes every job queued
so far and writes each object's jobs in one transaction. Whatever reads a
history (bookmarks, restores, reopening a database, closing the backend)
first waits until that object's jobs are written, so results never depend
on the worker's timing. The worker thread exists only while there is work:
it ends as soon as the queue is empty (closing the backend joins it), and
at most ``_MAX_QUEUED`` bytes of pages wait in memory (beyond that, queuing
waits for the worker).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from pyobjects._errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

__all__ = [
    "Archiver",
    "History",
    "WalState",
    "bookmark",
    "check_bookmark_time",
    "compress",
    "fsync_directory",
    "parse_bookmark",
    "read_wal_commits",
]

_WAL_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")
_WAL_MAGIC = (0x377F0682, 0x377F0683)

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS commits (seq INTEGER PRIMARY KEY,"
    " time_ms INTEGER NOT NULL, db_pages INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pages (pgno INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (pgno, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    # Pruning and time lookups visit only what changed since the last prune.
    "CREATE INDEX IF NOT EXISTS pages_by_seq ON pages (seq)",
    "CREATE INDEX IF NOT EXISTS commits_by_time ON commits (time_ms)",
)

# A page: a slice of the bytes read from a file, not copied.
Page = bytes | memoryview
# Commits to record: (time_ms, db_pages, {pgno: page}).
Commits = list[tuple[int, int, dict[int, Page]]]

# Bookmark kinds: the state after a commit, or "just before restore N".
PLAIN, UNDO = 0, 1

# Rows per INSERT statement of an append (3 parameters each, well below
# SQLite's limit of 32766 parameters).
_ROWS_PER_INSERT: Final = 256
# At most this many bytes of pages wait for the worker; beyond, queuing waits.
_MAX_QUEUED: Final = 64 << 20


# Inputs up to this size (a page, or a commit of a few pages) compress with
# zlib's small hash table; see compress().
_SMALL_INPUT: Final = 16 << 10


def compress(data: Page) -> bytes:
    """*data* as a zlib stream, level 1 (what the history and PostgreSQL store).

    For a small input, zlib's default hash table (32,768 entries, whose 64 KiB
    are cleared at every set-up, holding the GIL) costs more than compressing:
    about half the instructions of archiving a page. A small input gets the
    smallest useful table (memLevel 2: 512 entries), for output a few percent
    larger; a large one (a snapshot) keeps the default, which is faster and
    smaller there. Either is a plain zlib stream: ``zlib.decompress()`` reads
    its header.
    """
    if len(data) > _SMALL_INPUT:
        return zlib.compress(data, 1)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 2)
    return compressor.compress(data) + compressor.flush()


def _insert(
    conn: sqlite3.Connection, into: str, rows: Sequence[tuple[int, int, object]]
) -> None:
    # Many rows per statement: executemany() steps once per row, and each
    # step gives up the GIL and waits to get it back (the archiver's worker
    # thread slows the event loop's thread down at every exchange).
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        conn.execute(
            f"INSERT INTO {into} VALUES " + ",".join(["(?,?,?)"] * len(chunk)),
            [value for row in chunk for value in row],
        )


def fsync_directory(path: str) -> None:
    """Make the creation or removal of files in *path* durable."""
    if os.name != "posix":  # pragma: no cover - directories cannot be fsynced
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(namespace: str, object_id: str) -> str:
    return hashlib.sha256(f"{namespace}/{object_id}".encode()).hexdigest()[:32]


def bookmark(namespace: str, object_id: str, seq: int, kind: int = PLAIN) -> str:
    """Format a bookmark: it sorts lexically in commit (time) order."""
    return (
        f"{seq >> 32:08x}-{seq & 0xFFFFFFFF:08x}-{kind:08x}-"
        f"{_digest(namespace, object_id)}"
    )


def check_bookmark_time(retention_ms: int, when_ms: int, now_ms: int) -> None:
    """Raise ``ValueError`` if *when_ms* is older than the history kept."""
    if when_ms < now_ms - retention_ms:
        raise ValueError(
            "get_bookmark_for_time() needs a time within the last "
            f"{retention_ms / 86_400_000:g} days (pitr_retention)"
        )


def parse_bookmark(namespace: str, object_id: str, text: str) -> tuple[int, int]:
    """Return ``(seq, kind)`` of a bookmark of this object.

    Raises:
        ValueError: Malformed, or made for another object.
    """
    parts = text.split("-")
    if (
        len(parts) != 4
        or [len(p) for p in parts] != [8, 8, 8, 32]
        or any(c not in "0123456789abcdef" for c in text.replace("-", ""))
    ):
        raise ValueError(f"invalid bookmark: {text!r}")
    if parts[3] != _digest(namespace, object_id):
        raise ValueError(f"bookmark {text!r} belongs to another Durable Object")
    kind = int(parts[2], 16)
    if kind not in (PLAIN, UNDO):
        raise ValueError(f"invalid bookmark: {text!r}")
    return (int(parts[0], 16) << 32) | int(parts[1], 16), kind


@dataclass(slots=True)
class WalState:
    """What the backend knows about an open database's WAL."""

    offset: int = 0  # bytes of the WAL already archived
    times: list[int] = field(default_factory=list)  # commit times not archived
    every: int = 1  # archive after this many commits (set by the backend)
    # The salts of a WAL generation archived in full and then checkpointed
    # with RESTART: until the next write rewrites the header, the file still
    # holds that generation, and it must not be archived twice.
    done: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class WalCommit:
    """One committed transaction found in a WAL."""

    pages: dict[int, Page]
    db_pages: int


def read_wal_commits(
    path: str, offset: int, done: tuple[int, int] | None = None
) -> tuple[list[WalCommit], int, int, tuple[int, int] | None]:
    """Read the commits of the WAL at *path* from byte *offset*.

    Returns the commits, the offset after the last commit frame, the page
    size and the WAL's salts. Frames after the last commit frame (a
    transaction still being written, or one rolled back) are left alone; a
    WAL whose salts are *done* has nothing new.
    """
    try:
        # Unbuffered: a buffered read() of the rest after a seek is several
        # times slower, and this runs on the event loop's thread.
        with open(path, "rb", buffering=0) as f:
            header = f.read(_WAL_HEADER.size)
            if len(header) < _WAL_HEADER.size:
                return [], offset, 0, None
            magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = (
                _WAL_HEADER.unpack(header)
            )
            if magic not in _WAL_MAGIC:
                raise StorageError(f"{path} is not a SQLite WAL file")
            if (salt1, salt2) == done:
                return [], 0, page_size, done
            start = max(offset, _WAL_HEADER.size)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return [], offset, 0, None
    commits: list[WalCommit] = []
    pending: dict[int, Page] = {}
    view = memoryview(data)
    frame_size = _FRAME_HEADER.size + page_size
    pos = 0
    end = start
    while pos + frame_size <= len(data):
        pgno, db_pages, s1, s2, _c1, _c2 = _FRAME_HEADER.unpack_from(data, pos)
        if (s1, s2) != (salt1, salt2):
            break  # a frame of an earlier WAL generation
        pending[pgno] = view[pos + _FRAME_HEADER.size : pos + frame_size]
        pos += frame_size
        if db_pages:
            commits.append(WalCommit(pending, db_pages))
            pending = {}
            end = start + pos
    return commits, end, page_size, (salt1, salt2)


class History:
    """The history file of one object (opened for one operation at a time).

    Each operation opens its own connection, on the thread that calls it (the
    event loop's, or the archiver's worker), and closes it.
    """

    def __init__(
        self, path: str, namespace: str, object_id: str, *, durable: bool = False
    ) -> None:
        self.path = path
        # Present while the history may lack commits the database has.
        self.marker = path + "-pending"
        self.namespace = namespace
        self.object_id = object_id
        # FULL: an append is on disk when it returns (see the module docs).
        self._synchronous = "FULL" if durable else "NORMAL"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            for statement in _SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def exists(self) -> bool:
        """True if the history file exists."""
        return os.path.exists(self.path)

    def append(
        self,
        commits: Commits,
        page_size: int,
        cutoff_ms: int | None,
    ) -> int:
        """Record ``(time_ms, db_pages, pages)`` commits; return the last seq.

        With *cutoff_ms*, fold away what no commit since then needs.
        """
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('page_size', ?)",
                (page_size,),
            )
            (seq,) = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM commits"
            ).fetchone()
            commit_rows = []
            page_rows = []
            for time_ms, db_pages, pages in commits:
                seq += 1
                commit_rows.append((seq, time_ms, db_pages))
                page_rows += [
                    (pgno, seq, compress(page))
                    for pgno, page in pages.items()
                    if pgno <= db_pages
                ]
            _insert(conn, "commits (seq, time_ms, db_pages)", commit_rows)
            _insert(conn, "pages (pgno, seq, data)", page_rows)
            if cutoff_ms is not None:
                self._prune(conn, cutoff_ms)
            conn.execute("COMMIT")
            return int(seq)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write history {self.path}: {exc}") from exc
        finally:
            conn.close()

    @staticmethod
    def _prune(conn: sqlite3.Connection, cutoff_ms: int) -> None:
        row = conn.execute(
            "SELECT max(seq) FROM commits WHERE time_ms <= ?", (cutoff_ms,)
        ).fetchone()
        floor = row[0]
        row = conn.execute("SELECT value FROM meta WHERE key = 'pruned'").fetchone()
        pruned = 0 if row is None else int(row[0])
        if floor is None or floor <= pruned:
            return
        # Keep, per page, its newest version at the floor and everything
        # later. The last prune left no page a version older than its newest
        # at that floor, so only pages with a version since can lose any.
        conn.execute(
            "DELETE FROM pages WHERE pgno IN (SELECT pgno FROM pages WHERE seq > ?"
            " AND seq <= ?) AND seq < (SELECT max(seq) FROM pages AS p"
            " WHERE p.pgno = pages.pgno AND p.seq <= ?)",
            (pruned, floor, floor),
        )
        conn.execute("DELETE FROM commits WHERE seq < ?", (floor,))
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned', ?)", (floor,)
        )

    def latest(self) -> int:
        """The last recorded commit's seq (0 if none)."""
        conn = self._connect()
        try:
            (seq,) = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM commits"
            ).fetchone()
            return int(seq)
        finally:
            conn.close()

    def seq_for_time(self, when_ms: int) -> int | None:
        """The last commit at or before *when_ms*, or None if history starts later."""
        conn = self._connect()
        try:
            (seq,) = conn.execute(
                "SELECT max(seq) FROM commits WHERE time_ms <= ?", (when_ms,)
            ).fetchone()
            return None if seq is None else int(seq)
        finally:
            conn.close()

    def has(self, seq: int) -> bool:
        """True if the state after commit *seq* can be rebuilt."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT 1 FROM commits WHERE seq = ?", (seq,)).fetchone()
            return row is not None
        finally:
            conn.close()

    def get_meta(self, key: str) -> int | None:
        """An integer remembered in the history (undo targets, say)."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT value FROM meta WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else int(row[0])
        finally:
            conn.close()

    def set_meta(self, key: str, value: int) -> None:
        """Remember an integer in the history."""
        conn = self._connect()
        try:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )
        finally:
            conn.close()

    def rebuild(self, seq: int, target: str) -> None:
        """Write the database as it was after commit *seq* to the file *target*."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT db_pages FROM commits WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                raise StorageError(f"commit {seq} is not in {self.path}")
            (db_pages,) = row
            (page_size,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'page_size'"
            ).fetchone()
            rows = conn.execute(
                "SELECT pgno, data FROM pages AS p WHERE pgno <= ? AND seq = (SELECT"
                " max(seq) FROM pages WHERE pgno = p.pgno AND seq <= ?)",
                (db_pages, seq),
            ).fetchall()
        finally:
            conn.close()
        pages = {pgno: zlib.decompress(data) for pgno, data in rows}
        missing = [n for n in range(1, db_pages + 1) if n not in pages]
        if missing:
            raise StorageError(
                f"history {self.path} lacks {len(missing)} page(s) of commit {seq}"
            )
        with open(target, "wb") as f:
            for n in range(1, db_pages + 1):
                page = pages[n]
                if len(page) != page_size:  # pragma: no cover - corrupt history
                    raise StorageError(f"history {self.path}: page {n} is damaged")
                f.write(page)
            f.flush()
            os.fsync(f.fileno())


def read_pages(path: str, page_size: int) -> dict[int, Page]:
    """Every page of the database file at *path* (checkpointed, WAL empty)."""
    with open(path, "rb", buffering=0) as f:
        view = memoryview(f.read())
    return {
        n // page_size + 1: view[n : n + page_size]
        for n in range(0, len(view) - page_size + 1, page_size)
    }


@dataclass(slots=True)
class _Job:
    """Commits of one object, waiting for the worker."""

    key: Hashable
    history: History
    commits: Commits
    page_size: int
    cutoff_ms: int | None
    whole: bool  # the whole database, recorded as one commit: heals a gap
    size: int  # bytes of pages held


class Archiver:
    """Append archives to history files on a worker thread (see the module docs).

    One per backend. Every method but the worker's is called on the event
    loop's thread; a job is reserved (:meth:`reserve`) before the database
    is checkpointed, and queued (:meth:`submit`) after it, or given up
    (:meth:`abandon`).

    Args:
        durable: Fsync the directory after creating a marker (the histories
            are opened with ``durable`` too).
    """

    def __init__(self, *, durable: bool) -> None:
        self._durable = durable
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: list[_Job] = []
        # Per object: jobs reserved, queued or being written.
        self._in_flight: dict[Hashable, int] = {}
        # Objects whose marker this archiver created and still owns.
        self._marked: set[Hashable] = set()
        # Objects whose history has a gap (and why), and those of them for
        # which no whole record is queued yet.
        self._broken: dict[Hashable, BaseException] = {}
        self._heal: set[Hashable] = set()
        self._bytes = 0  # of the pages in queued jobs and jobs being written
        self._thread: threading.Thread | None = None  # the worker, while it runs
        self._last: threading.Thread | None = None  # the worker to join

    def reserve(self, key: Hashable, history: History) -> None:
        """Count one more job of *key* and make sure its marker exists.

        Call before checkpointing the database; follow with :meth:`submit`
        or :meth:`abandon`.

        Raises:
            OSError: The marker cannot be created (nothing was reserved).
        """
        with self._lock:
            self._mark(key, history)
            self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def submit(
        self,
        key: Hashable,
        history: History,
        commits: Commits,
        page_size: int,
        cutoff_ms: int | None,
        *,
        whole: bool = False,
    ) -> None:
        """Queue a job reserved with :meth:`reserve`; start the worker if needed.

        Waits while too many bytes of pages are queued already.
        """
        size = sum(len(page) for _, _, pages in commits for page in pages.values())
        job = _Job(key, history, commits, page_size, cutoff_ms, whole, size)
        with self._lock:
            while self._bytes and self._bytes + size > _MAX_QUEUED:
                self._changed.wait()
            if whole:
                self._heal.discard(key)
            self._queue.append(job)
            self._bytes += size
            thread = None
            if self._thread is None:
                thread = threading.Thread(
                    target=self._work, name="pyobjects-history", daemon=False
                )
                self._thread = self._last = thread
        if thread is not None:
            try:
                thread.start()
            except RuntimeError:  # pragma: no cover - shutting down, or no threads
                self._work()  # write it here and now

    def abandon(self, key: Hashable, error: BaseException) -> None:
        """A reserved job will not come: the history of *key* may have a gap.

        The marker that :meth:`reserve` made stays.
        """
        with self._lock:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
            self._break(key, error)
            self._changed.notify_all()

    def mark_broken(
        self, key: Hashable, history: History, error: BaseException
    ) -> None:
        """The database of *key* was checkpointed past its history.

        Raises:
            OSError: The marker cannot be created.
        """
        with self._lock:
            self._mark(key, history)
            self._break(key, error)

    def note_gap(self, key: Hashable, error: BaseException) -> None:
        """The history of *key* may lack commits: its next archive is whole.

        Unlike :meth:`mark_broken`, creates no marker (creating it may be
        what failed); for a database whose WAL still holds those commits.
        """
        with self._lock:
            self._break(key, error)

    def needs_whole(self, key: Hashable) -> bool:
        """True if the history of *key* has a gap and no whole record is queued."""
        with self._lock:
            return key in self._heal

    def wait(self, key: Hashable | None = None) -> BaseException | None:
        """Wait until the jobs of *key* (or all jobs) are written.

        Returns why the history of *key* has a gap, or None if it has none.
        """
        with self._lock:
            if key is None:
                while self._in_flight:
                    self._changed.wait()
                return None
            while key in self._in_flight:
                self._changed.wait()
            return self._broken.get(key)

    def close(self) -> None:
        """Wait until every job is written and the worker thread has ended.

        The archiver can be used again afterwards (it starts a new worker).
        """
        with self._lock:
            while self._in_flight or self._thread is not None:
                self._changed.wait()
            last, self._last = self._last, None
        if last is not None and last.ident is not None:
            last.join()

    # -- under the lock ----------------------------------------------------------

    def _mark(self, key: Hashable, history: History) -> None:
        if key in self._marked:
            return
        fd = os.open(history.marker, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        if self._durable:
            fsync_directory(os.path.dirname(history.marker) or ".")
        self._marked.add(key)

    def _break(self, key: Hashable, error: BaseException) -> None:
        self._broken[key] = error
        self._heal.add(key)

    # -- the worker thread -------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                jobs = self._queue
                if not jobs:
                    self._thread = None
                    self._changed.notify_all()
                    return
                self._queue = []
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._write(key, group)

    def _write(self, key: Hashable, group: list[_Job]) -> None:
        """Append one object's jobs (in queue order) in one transaction."""
        with self._lock:
            gap = self._broken.get(key)
        broken = gap is not None
        commits: Commits = []
        for job in group:
            if job.whole:
                broken = False
            if not broken:  # jobs after a gap are dropped: a whole record follows
                commits.extend(job.commits)
        error: BaseException | None = None
        try:
            if commits:
                last = group[-1]
                last.history.append(commits, last.page_size, last.cutoff_ms)
        except BaseException as exc:  # kept; readers of the history raise it
            error = exc
        with self._lock:
            if error is not None:
                self._break(key, error)
            elif gap is not None and not broken and self._broken.get(key) is gap:
                # Healed, and no new gap was reported meanwhile.
                del self._broken[key]
            self._bytes -= sum(job.size for job in group)
            left = self._in_flight[key] - len(group)
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]
                if key not in self._broken and key in self._marked:
                    self._marked.discard(key)
                    # If this fails, the next open records the database whole.
                    with contextlib.suppress(OSError):
                        os.unlink(group[-1].history.marker)
            self._changed.notify_all()
