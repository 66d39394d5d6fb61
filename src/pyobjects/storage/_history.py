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
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

from pyobjects._errors import StorageError

__all__ = ["History", "WalState", "bookmark", "parse_bookmark", "read_wal_commits"]

_WAL_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")
_WAL_MAGIC = (0x377F0682, 0x377F0683)

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS commits (seq INTEGER PRIMARY KEY,"
    " time_ms INTEGER NOT NULL, db_pages INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pages (pgno INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (pgno, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
)

# Bookmark kinds: the state after a commit, or "just before restore N".
PLAIN, UNDO = 0, 1


def _compress(page: bytes) -> bytes:
    # A 4 KiB window and little memory: a page is 4 KiB, and setting up
    # zlib.compress()'s default 32 KiB window costs more than compressing.
    # zlib.decompress() reads the result (the window size is in the header).
    compressor = zlib.compressobj(1, zlib.DEFLATED, 12, 2)
    return compressor.compress(page) + compressor.flush()


def _digest(namespace: str, object_id: str) -> str:
    return hashlib.sha256(f"{namespace}/{object_id}".encode()).hexdigest()[:32]


def bookmark(namespace: str, object_id: str, seq: int, kind: int = PLAIN) -> str:
    """Format a bookmark: it sorts lexically in commit (time) order."""
    return (
        f"{seq >> 32:08x}-{seq & 0xFFFFFFFF:08x}-{kind:08x}-"
        f"{_digest(namespace, object_id)}"
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
    # The salts of a WAL generation archived in full and then checkpointed
    # with RESTART: until the next write rewrites the header, the file still
    # holds that generation, and it must not be archived twice.
    done: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class WalCommit:
    """One committed transaction found in a WAL."""

    pages: dict[int, bytes]
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
        with open(path, "rb") as f:
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
    pending: dict[int, bytes] = {}
    frame_size = _FRAME_HEADER.size + page_size
    pos = 0
    end = start
    while pos + frame_size <= len(data):
        pgno, db_pages, s1, s2, _c1, _c2 = _FRAME_HEADER.unpack_from(data, pos)
        if (s1, s2) != (salt1, salt2):
            break  # a frame of an earlier WAL generation
        pending[pgno] = data[pos + _FRAME_HEADER.size : pos + frame_size]
        pos += frame_size
        if db_pages:
            commits.append(WalCommit(pending, db_pages))
            pending = {}
            end = start + pos
    return commits, end, page_size, (salt1, salt2)


class History:
    """The history file of one object (opened for one operation at a time)."""

    def __init__(self, path: str, namespace: str, object_id: str) -> None:
        self.path = path
        self.namespace = namespace
        self.object_id = object_id

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
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
        commits: list[tuple[int, int, dict[int, bytes]]],
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
            for time_ms, db_pages, pages in commits:
                seq += 1
                conn.execute(
                    "INSERT INTO commits (seq, time_ms, db_pages) VALUES (?, ?, ?)",
                    (seq, time_ms, db_pages),
                )
                conn.executemany(
                    "INSERT INTO pages (pgno, seq, data) VALUES (?, ?, ?)",
                    [
                        (pgno, seq, _compress(page))
                        for pgno, page in pages.items()
                        if pgno <= db_pages
                    ],
                )
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
        if floor is None:
            return
        # Keep, per page, its newest version at the floor and everything later.
        conn.execute(
            "DELETE FROM pages WHERE seq < ? AND EXISTS (SELECT 1 FROM pages AS p"
            " WHERE p.pgno = pages.pgno AND p.seq > pages.seq AND p.seq <= ?)",
            (floor, floor),
        )
        conn.execute("DELETE FROM commits WHERE seq < ?", (floor,))

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


def read_pages(path: str, page_size: int) -> dict[int, bytes]:
    """Every page of the database file at *path* (checkpointed, WAL empty)."""
    pages = {}
    with open(path, "rb") as f:
        n = 1
        while page := f.read(page_size):
            pages[n] = page
            n += 1
    return pages
