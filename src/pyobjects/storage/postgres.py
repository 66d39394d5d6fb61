"""A storage backend on PostgreSQL: any process on the database can run any object.

One storage model everywhere: as on Cloudflare (and on
:class:`~pyobjects.storage.SQLiteBackend`), an object's state is one SQLite
database, its key-value data in the reserved table ``_cf_KV``. The process
that holds the object keeps that database locally, as a cache, in WAL mode
with automatic checkpoints off; every commit then ships what it changed (the
WAL frames of the commit: the new versions of the pages it touched) to
PostgreSQL in one fenced statement, and only then does the output gate let
results out. A process that starts the object rebuilds the database from
PostgreSQL: the newest snapshot (a commit that shipped every page) and the
commits after it. Snapshots are taken when the commits since the last one
outweigh it, and the log before the newest snapshot older than the
point-in-time retention is dropped. So the SQL API, bookmarks and
``delete_all()`` behave as on SQLite.

Fencing: every object has a lease row (owner, epoch, expiry by the database
clock). Starting an object takes the lease (a free or expired one, or one
this backend holds already) and bumps the epoch; a commit applies only where
the row still has this owner and epoch, in the same statement that writes the
log, so once a newer owner exists no older one can commit (the object is then
reset with :class:`~pyobjects.LeaseLostError`). Leases are renewed in one
statement per backend (every third of the TTL) while a runtime runs, and
given back when an object is evicted or the runtime stops.

The local cache needs no durability (PostgreSQL is the truth): it runs with
``synchronous=OFF`` in a private temporary directory (or ``cache_directory``),
and every start of an object rebuilds it. asyncpg runs on asyncio only, so
this backend does not run under trio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import sqlite3
import struct
import tempfile
import time
import typing
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from pyobjects._errors import (
    LeaseHeldError,
    LeaseLostError,
    StorageError,
    StorageUnavailableError,
)
from pyobjects._inflight import operations

from ._base import (
    RESERVED_SCHEMA,
    AlarmEntry,
    check_namespace,
    check_object_id,
)
from ._history import (
    UNDO,
    bookmark,
    check_bookmark_time,
    compress,
    parse_bookmark,
    read_pages,
    read_wal_commits,
)
from ._pg_sql import (
    ACTIVATE,
    ALARMS,
    CLAIM_ALARMS,
    DDL,
    HOLDER,
    LIST_IDS,
    LIST_NAMESPACES,
    LOG,
    NODE_BEAT,
    NODE_JOIN,
    NODE_LEAVE,
    NODE_LIVE,
    NODE_URL,
    NODES,
    PRUNE,
    RELEASE,
    RELEASE_ALL,
    RENEW,
    RETRY,
    SHIP,
)
from ._sqlite_store import HOLDS_DATA, SQLiteStore, read_alarm
from .sqlite import _Connection, create_tables

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    import asyncpg

    from ._base import ListQuery, WriteBatch
    from ._history import History, Page

__all__ = ["PostgresBackend"]

logger: logging.Logger = logging.getLogger("pyobjects")

_Key = tuple[str, str]
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PGNO = struct.Struct(">I")
# Checkpoint the local WAL once this much of it was shipped.
_CHECKPOINT_BYTES = 4 << 20
# Take a snapshot once the commits since the last one are this much bigger
# than it (compressed), and at least _MIN_SNAPSHOT_BYTES.
_SNAPSHOT_RATIO = 1
# Self-fencing: trust a lease for this fraction of the TTL less than it runs
# (the database judges expiry by its own clock; this margin covers the
# renewal's round trip and clock rates).
_FENCE_MARGIN = 0.2
_MIN_SNAPSHOT_BYTES = 256 << 10
# SQLSTATEs worth retrying: connection failures (class 08), shutdown and
# start-up (57P0x), too many connections, serialization and deadlocks.
_TRANSIENT_STATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "53300"})

_NO_PITR = (
    "This Durable Object's storage back-end does not implement point-in-time "
    "recovery (PostgresBackend was created with pitr_retention=0)."
)


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


def _pack(pages: Mapping[int, Page]) -> bytes:
    """Pages as one compressed blob: (page number, page) in page order."""
    parts: list[bytes | Page] = []
    for pgno in sorted(pages):
        parts.append(_PGNO.pack(pgno))
        parts.append(pages[pgno])
    return compress(b"".join(parts))


def _unpack(data: bytes, page_size: int, into: dict[int, bytes]) -> None:
    raw = zlib.decompress(data)
    step = _PGNO.size + page_size
    if len(raw) % step:
        raise StorageError("a commit in PostgreSQL is damaged (bad page data)")
    for pos in range(0, len(raw), step):
        (pgno,) = _PGNO.unpack_from(raw, pos)
        into[pgno] = raw[pos + _PGNO.size : pos + step]


def _transient(exc: BaseException) -> bool:
    """True if *exc* is worth retrying (the server or the network, not us)."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and (
        state.startswith("08") or state in _TRANSIENT_STATES
    ):
        return True
    name = type(exc).__name__
    if name == "InternalClientError":
        # A pooled connection the server broke off while it was idle (its
        # unsolicited error, 57P01 on pg_terminate_backend() or a shutdown,
        # left the protocol waiting for an end that never comes): asyncpg
        # refuses the next statement before sending anything.
        return str(exc).startswith(("cannot switch to state", "not connected"))
    return name in {"ConnectionDoesNotExistError", "ConnectionFailureError"} or (
        name == "InterfaceError" and "connection" in str(exc).lower()
    )


async def _keep_session(conn: object) -> None:
    """Give a connection back to the pool as it is (asyncpg's ``reset``).

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` on every release: one more round trip per
    operation, per commit here (about 0.1 ms of a 0.4 ms commit). This
    backend never leaves session state behind (no ``SET``, ``LISTEN``,
    session advisory locks or cursors; its advisory lock is per transaction),
    and asyncpg still rolls back an open transaction before calling this.
    """
    del conn


@dataclass(slots=True, eq=False)
class _Object:
    """An object this backend holds (its lease), with its local database."""

    key: _Key
    epoch: int
    head: int  # sequence number of the last commit in PostgreSQL
    path: str  # the local database file
    conn: sqlite3.Connection | None = None
    offset: int = 0  # bytes of the local WAL already shipped
    whole_next: bool = False  # the next commit ships every page
    since_snapshot: int = 0  # compressed bytes shipped since the last snapshot
    snapshot_bytes: int = 0
    snapshots: list[tuple[int, int]] = field(default_factory=list)  # (seq, ms)
    lost: str | None = None  # why this holder may not commit any more
    valid_until: float = float("inf")  # monotonic end of the trusted lease


@typing.final
class PostgresBackend:
    """Keep Durable Object storage in PostgreSQL, fenced by per-object leases.

    A drop-in for :class:`~pyobjects.storage.SQLiteBackend` (the whole
    storage API, SQL included) for deployments where several processes or
    machines share one database: every commit is durable in PostgreSQL before
    its results leave the object, and an object runs in at most one process
    at a time (see the module documentation). Needs the ``postgres`` extra
    (asyncpg) and asyncio.

    Args:
        dsn: A libpq connection string or URI (``postgresql://host/db``).
        schema: The PostgreSQL schema for the tables; created if missing.
            Runtimes that share a schema share their objects.
        lease_ttl: Seconds a lease lasts without renewal (by the database
            clock); another process may take an object over only after its
            holder failed to renew for this long.
        pitr_retention: How far back point-in-time recovery reaches (default
            30 days); ``0`` keeps only what rebuilding needs.
        cache_directory: Where the local copies of objects live (default: a
            private temporary directory, removed by :meth:`aclose`).
        pool_size: Most connections open to PostgreSQL at once.
        retries: How many times an operation that failed on a connection
            problem is retried (with growing pauses, about 4 s in all at the
            default) before :class:`~pyobjects.StorageUnavailableError`.

    Raises:
        ValueError: If an option is invalid.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "pyobjects",
        lease_ttl: float = 10.0,
        pitr_retention: timedelta | float = timedelta(days=30),
        cache_directory: str | os.PathLike[str] | None = None,
        pool_size: int = 10,
        retries: int = 5,
    ) -> None:
        if not isinstance(typing.cast("object", dsn), str) or not dsn:
            raise ValueError("dsn must be a non-empty PostgreSQL connection string")
        if _SCHEMA_RE.fullmatch(schema) is None:
            raise ValueError(
                f"invalid schema name {schema!r}: use 1 to 63 letters, digits "
                "and underscores, not starting with a digit"
            )
        if not 0.5 <= lease_ttl <= 86_400:
            raise ValueError(
                f"lease_ttl must be in 0.5..86400 seconds, not {lease_ttl}"
            )
        seconds = (
            pitr_retention.total_seconds()
            if isinstance(pitr_retention, timedelta)
            else pitr_retention
        )
        if not 0 <= seconds < float("inf"):
            raise ValueError(
                f"pitr_retention must be a duration >= 0, not {pitr_retention!r}"
            )
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._dsn = dsn
        self._schema = schema
        self._sql: dict[str, str] = {}
        self._ttl = float(lease_ttl)
        self._retention_ms = int(seconds * 1000)
        self._pool_size = pool_size
        self._retries = retries
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._now_ms: Callable[[], int] = _system_ms
        self._pool: asyncpg.Pool[Any] | None = None
        self._objects: dict[_Key, _Object] = {}
        self._releases: list[tuple[_Key, int]] = []
        self._wake: anyio.Event | None = None
        self._cache_given = cache_directory is not None
        self._cache = None if cache_directory is None else os.fspath(cache_directory)
        self._read_only = False  # see read_only_postgres()
        self._pending_restores: set[_Key] = set()  # (SQLiteStore's protocol)
        # Operations under way on PostgreSQL (tests wait for them to settle).
        self._busy = 0
        # This owner's address as a cluster node (see register_node()).
        self._node_url: str | None = None
        # Where claimed due alarms go (see use_alarms()).
        self._adopt: Callable[[Sequence[AlarmEntry]], None] | None = None
        self._alarm_namespaces: list[str] = []

    # -- what the runtime uses -------------------------------------------------

    @property
    def owner(self) -> str:
        """The name this backend holds leases under (host, PID, random part)."""
        return self._owner

    def open(self, namespace: str, object_id: str, /) -> PostgresStore:
        """Return a handle on one object's storage; takes nothing yet.

        The lease is taken, and the local copy rebuilt, by the store's
        ``activate()`` (the runtime awaits it before the constructor runs) or
        by its first read or commit.

        Raises:
            ValueError: If the namespace or the id is malformed.
        """
        check_namespace(namespace)
        check_object_id(object_id)
        return PostgresStore(self, (namespace, object_id))

    def use_clock(self, now_ms: Callable[[], int], /) -> None:
        """Take commit times for the history from the runtime's clock."""
        self._now_ms = now_ms

    async def claim(self) -> None:
        """Connect and create the schema; a runtime calls this when it starts.

        Raises:
            StorageUnavailableError: If PostgreSQL cannot be reached.
        """
        await self._get_pool()

    def use_alarms(
        self, adopt: Callable[[Sequence[AlarmEntry]], None], namespaces: Sequence[str]
    ) -> None:
        """Hand due alarms claimed by :meth:`maintain` to the runtime's scheduler.

        Only alarms of *namespaces* (those the runtime binds) are claimed.
        """
        self._adopt = adopt
        self._alarm_namespaces = list(namespaces)

    async def maintain(self) -> None:
        """Renew leases, give released ones back, claim due alarms; until cancelled.

        A runtime runs this in the background, every third of the lease TTL.
        An object whose lease could not be renewed (another owner took it)
        can no longer commit. A due alarm of an object nobody holds (its
        holder stopped, or died and its lease ran out) is claimed with
        ``FOR UPDATE SKIP LOCKED``, so that one runtime, not several, runs it.
        """
        while True:
            wake = self._wake = anyio.Event()
            with anyio.move_on_after(self._ttl / 3):
                await wake.wait()
            try:
                await self._release_pending()
                await self._renew()
                await self._claim_due_alarms()
            except Exception as exc:
                logger.warning(
                    "cannot renew the PostgreSQL leases of %s: %s", self._owner, exc
                )

    async def register_node(self, url: str) -> None:
        """Record that this backend's owner is a cluster node reachable at *url*.

        Its heartbeat is renewed with the leases (see :meth:`maintain`); other
        nodes find it with :meth:`node_url` while the heartbeat is fresh.
        """
        self._node_url = url
        await self._run(_execute(self._q(NODE_JOIN), self._owner, url))

    async def node_url(self, owner: str) -> str | None:
        """The address of the live node *owner*, or ``None`` (none, or not live)."""
        url = await self._run(lambda c: c.fetchval(self._q(NODE_URL), owner, self._ttl))
        return None if url is None else str(url)

    async def node_is_live(self, url: str) -> bool:
        """True if a node with this address renewed its heartbeat within the TTL."""
        count = await self._run(
            lambda c: c.fetchval(self._q(NODE_LIVE), url, self._ttl)
        )
        return bool(count)

    async def live_nodes(self) -> list[str]:
        """The addresses of the nodes whose heartbeat is fresh, sorted."""
        rows = await self._run(lambda c: c.fetch(self._q(NODES), self._ttl))
        return [str(row[0]) for row in rows]

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lasts without renewal (the ``lease_ttl`` option)."""
        return self._ttl

    async def list_object_ids(self, namespace: str, /) -> list[str]:
        """Return the sorted ids of the namespace's objects with a key or an alarm."""
        check_namespace(namespace)
        rows = await self._run(lambda c: c.fetch(self._q(LIST_IDS), namespace))
        return [str(row[0]) for row in rows]

    async def list_namespaces(self) -> list[str]:
        """Return the sorted namespaces that have at least one committed object.

        Read-only (for ``pyobjects inspect``); not part of the backend protocol.
        """
        rows = await self._run(lambda c: c.fetch(self._q(LIST_NAMESPACES)))
        return [str(row[0]) for row in rows]

    async def pending_alarms(self) -> list[AlarmEntry]:
        """Every pending alarm, except those of objects another owner holds now."""
        rows = await self._run(lambda c: c.fetch(self._q(ALARMS), self._owner))
        return _alarm_entries(rows)

    async def record_alarm_retry(
        self,
        namespace: str,
        object_id: str,
        /,
        *,
        scheduled_ms: int,
        retry_count: int,
        retry_ms: int | None,
    ) -> None:
        """Remember a failed attempt at the alarm set for *scheduled_ms*."""
        await self._run(
            lambda c: c.execute(
                self._q(RETRY),
                namespace,
                object_id,
                scheduled_ms,
                retry_count,
                retry_ms,
            )
        )

    async def aclose(self) -> None:
        """Give every lease back, close the connections and the local copies.

        The data stays in PostgreSQL; the backend may be used again (it
        reconnects lazily), as by a restarted runtime.
        """
        for key in list(self._objects):
            self._drop(key)
        pool, self._pool = self._pool, None
        if pool is not None and not _on_this_loop(pool):
            # Opened by an event loop that has ended (inspect --web runs the
            # server's loop, then closes here): nothing can be awaited on it.
            pool.terminate()
            pool = None
        if pool is not None:
            with contextlib.suppress(Exception), anyio.move_on_after(5):
                async with pool.acquire() as conn:
                    await conn.execute(self._q(RELEASE_ALL), self._owner)
                    if self._node_url is not None:
                        await conn.execute(self._q(NODE_LEAVE), self._owner)
            self._node_url = None
            self._releases.clear()
            with anyio.move_on_after(5) as scope:
                await pool.close()
            if scope.cancelled_caught:  # pragma: no cover - a server gone silent
                pool.terminate()
        if self._cache is not None and not self._cache_given:
            shutil.rmtree(self._cache, ignore_errors=True)
            self._cache = None

    # -- PostgreSQL --------------------------------------------------------------

    def _q(self, statement: str) -> str:
        text = self._sql.get(statement)
        if text is None:
            text = self._sql[statement] = statement.format(s=f'"{self._schema}"')
        return text

    async def _get_pool(self) -> asyncpg.Pool[Any]:
        if self._pool is not None:
            return self._pool
        import sniffio

        if sniffio.current_async_library() != "asyncio":
            raise StorageError(
                "PostgresBackend runs on asyncio only (asyncpg); it cannot run "
                f"under {sniffio.current_async_library()}"
            )
        try:
            import asyncpg
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise StorageError(
                "PostgresBackend needs asyncpg: pip install 'pyobjects[postgres]'"
            ) from exc
        last: BaseException | None = None
        for attempt in range(self._retries + 1):
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=10,
                    reset=_keep_session,
                )
                break
            except Exception as exc:
                if not _transient(exc):
                    raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
                last = exc
                await anyio.sleep(_pause(attempt))
        else:
            raise StorageUnavailableError(
                f"cannot connect to PostgreSQL: {last}"
            ) from last
        try:
            async with pool.acquire() as conn, conn.transaction():
                # One creator at a time: concurrent CREATE ... IF NOT EXISTS
                # of the same table can fail on a unique index.
                await conn.execute("SELECT pg_advisory_xact_lock(7279461, 1)")
                for statement in DDL:
                    await conn.execute(self._q(statement))
        except BaseException:
            pool.terminate()
            raise
        existing = self._current_pool()
        if existing is not None:  # pragma: no cover - two first uses at once
            pool.terminate()
            return existing
        self._pool = pool
        return pool

    def _current_pool(self) -> asyncpg.Pool[Any] | None:
        # A method: type checkers keep `self._pool` narrowed across awaits.
        return self._pool

    async def _run(
        self, op: Callable[[asyncpg.pool.PoolConnectionProxy[Any]], Awaitable[Any]]
    ) -> Any:
        """Run *op* on a pooled connection, retrying connection problems.

        *op* must be safe to run twice (a retry may follow an attempt whose
        outcome is unknown); the commit statement makes itself so.
        """
        last: BaseException | None = None
        self._busy += 1
        operations.count += 1
        try:
            for attempt in range(self._retries + 1):
                try:
                    pool = await self._get_pool()
                    async with pool.acquire() as conn:
                        return await op(conn)
                except StorageError:
                    raise
                except Exception as exc:
                    if not _transient(exc):
                        raise StorageError(f"PostgreSQL: {exc}") from exc
                    last = exc
                    await anyio.sleep(_pause(attempt))
        finally:
            self._busy -= 1
            operations.count -= 1
        raise StorageUnavailableError(
            f"PostgreSQL cannot be reached ({last}); tried {self._retries + 1} times"
        ) from last

    async def _renew(self) -> None:
        if self._pool is None or self._read_only:
            return
        started = time.monotonic()
        # Only what was held when the statement went out is judged by its
        # result: an object started meanwhile is missing from it.
        judged = list(self._objects.values())
        rows = await self._run(
            lambda c: c.fetch(self._q(RENEW), self._owner, self._ttl)
        )
        if self._node_url is not None:
            await self._run(_execute(self._q(NODE_BEAT), self._owner))
        held = {(str(r[0]), str(r[1])): int(r[2]) for r in rows}
        valid_until = started + self._ttl * (1 - _FENCE_MARGIN)
        for obj in judged:
            if self._objects.get(obj.key) is not obj:
                continue  # dropped meanwhile
            if held.get(obj.key) != obj.epoch:
                if obj.lost is None:
                    obj.lost = "its lease was taken over by another owner"
            else:
                obj.valid_until = valid_until

    def lease_valid(self, namespace: str, object_id: str) -> bool:
        """False if this backend holds the object but its lease may have run out.

        Self-fencing: the lease is trusted until the last successful renewal
        (or the activation) plus the TTL minus a margin, by this process's
        monotonic clock, so a process that was paused past its lease stops
        serving the object until a renewal says it still holds it.
        """
        obj = self._objects.get((namespace, object_id))
        if obj is None or self._read_only:
            return True
        return obj.lost is None and time.monotonic() < obj.valid_until

    async def revalidate(self, namespace: str, object_id: str) -> bool:
        """Renew now; return whether this backend still holds the object."""
        await self._renew()
        return self.lease_valid(namespace, object_id)

    async def _claim_due_alarms(self) -> None:
        adopt = self._adopt
        if adopt is None or not self._alarm_namespaces or self._read_only:
            return
        rows = await self._run(
            lambda c: c.fetch(
                self._q(CLAIM_ALARMS),
                self._owner,
                self._now_ms(),
                self._ttl,
                self._alarm_namespaces,
            )
        )
        if rows:
            adopt(_alarm_entries(rows))

    async def _release_pending(self) -> None:
        while self._releases and self._pool is not None:
            (namespace, object_id), epoch = self._releases[-1]
            await self._run(
                _execute(self._q(RELEASE), namespace, object_id, self._owner, epoch)
            )
            self._releases.pop()

    # -- one object --------------------------------------------------------------

    def _cache_root(self) -> str:
        if self._cache is None:
            self._cache = tempfile.mkdtemp(prefix="pyobjects-pg-")
        return self._cache

    async def _activate(self, key: _Key) -> tuple[_Object, int | bool | None]:
        """Take the object's lease and rebuild its local copy.

        Returns the object and, if a scheduled restore was applied, the
        restored alarm (``False`` otherwise).
        """
        namespace, object_id = key
        obj = self._objects.get(key)
        if obj is not None and not self._read_only:
            return obj, False
        started = time.monotonic()
        if self._read_only:
            row = await self._run(
                lambda c: c.fetchrow(self._q(HOLDER), namespace, object_id)
            )
            epoch, head, restore = -1, 0 if row is None else int(row[2]), None
            if obj is not None:
                if obj.head == head:
                    return obj, False  # the copy is still the last commit
                self._drop(key)
        else:
            row = holder = None
            for _ in range(3):
                row = await self._run(
                    lambda c: c.fetchrow(
                        self._q(ACTIVATE), namespace, object_id, self._owner, self._ttl
                    )
                )
                if row is not None:
                    break
                holder = await self._run(
                    lambda c: c.fetchrow(self._q(HOLDER), namespace, object_id)
                )
                if (
                    holder is not None
                    and holder[0] is not None
                    and (holder[3] or 0) > 0
                ):
                    break
                # Given back between the two statements (its holder stopped):
                # take it now.
            if row is None:
                raise LeaseHeldError(
                    namespace=namespace,
                    object_id=object_id,
                    owner=str(holder[0]) if holder is not None else "another owner",
                    expires_in=float(holder[3] or 0.0) if holder is not None else 0.0,
                )
            epoch, head, restore = int(row[0]), int(row[1]), row[2]
        if key in self._objects:  # pragma: no cover - activated meanwhile
            return self._objects[key], False
        directory = os.path.join(self._cache_root(), namespace)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, object_id + ".sqlite")
        _remove_database(path)
        obj = _Object(key, epoch, head, path)
        if not self._read_only:
            obj.valid_until = started + self._ttl * (1 - _FENCE_MARGIN)
        restored: int | bool | None = False
        try:
            if restore is not None:
                target, before = (int(x) for x in str(restore).split(":"))
                await self._rebuild(obj, target)
                self._objects[key] = obj
                restored = await self._finish_restore(obj, before)
            else:
                if head:
                    await self._rebuild(obj, head)
                self._objects[key] = obj
        except BaseException:
            self._objects.pop(key, None)
            if obj.conn is not None:
                obj.conn.close()
            _remove_database(path)
            if not self._read_only:
                self._releases.append((key, epoch))
            raise
        return obj, restored

    async def _rebuild(self, obj: _Object, seq: int) -> None:
        """Write the local database as it was after commit *seq*."""
        namespace, object_id = obj.key
        rows = await self._run(
            lambda c: c.fetch(self._q(LOG), namespace, object_id, seq)
        )
        if not rows or int(rows[-1][0]) != seq:
            raise StorageError(
                f"PostgreSQL lacks commit {seq} of Durable Object {namespace}/"
                f"{object_id} (its log is damaged)"
            )
        pages: dict[int, bytes] = {}
        page_size = int(rows[0][3])
        for row in rows:
            _unpack(row[4], page_size, pages)
        db_pages = int(rows[-1][2])
        missing = [n for n in range(1, db_pages + 1) if n not in pages]
        if missing:
            raise StorageError(
                f"PostgreSQL lacks {len(missing)} page(s) of commit {seq} of "
                f"Durable Object {namespace}/{object_id}"
            )
        # Local disk, as every SQLite backend write (no thread hop).
        with open(obj.path, "wb") as f:  # noqa: ASYNC230
            f.writelines(pages[n] for n in range(1, db_pages + 1))
        obj.snapshots = [(int(r[0]), int(r[5])) for r in rows if r[1]]
        obj.snapshot_bytes = len(rows[0][4])
        obj.since_snapshot = sum(len(r[4]) for r in rows[1:])

    async def _finish_restore(self, obj: _Object, before: int) -> int | None:
        """Record a restored database as a snapshot; return its alarm."""
        conn = self._acquire(obj.key, create=True)
        assert conn is not None
        alarm = read_alarm(conn)
        obj.whole_next = True
        latest = obj.head
        await self._ship(
            obj,
            alarm=alarm,
            alarm_changed=True,
            name=None,
            clear_restore=True,
        )
        namespace, object_id = obj.key
        await self._run(
            lambda c: c.execute(
                "INSERT INTO {s}.marks (namespace, object_id, key, value)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, object_id, key)"
                " DO UPDATE SET value = excluded.value".format(s=f'"{self._schema}"'),
                namespace,
                object_id,
                f"undo:{before}",
                latest,
            )
        )
        return alarm

    def _changes(self, obj: _Object) -> tuple[bool, dict[int, Page], int, int] | None:
        """What the local commits since the last shipment changed.

        Returns ``(whole, pages, db_pages, page_size)``, or ``None`` if
        nothing changed.
        """
        conn = obj.conn
        assert conn is not None
        wal = obj.path + "-wal"
        whole = obj.whole_next or obj.since_snapshot > max(
            obj.snapshot_bytes * _SNAPSHOT_RATIO, _MIN_SNAPSHOT_BYTES
        )
        if whole:
            # Every commit in the WAL, over the database file: read once.
            every, end, _, _ = read_wal_commits(wal, 0)
            if end == obj.offset and not obj.whole_next:
                return None  # nothing new since the last shipment
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            pages = read_pages(obj.path, page_size)
            db_pages = len(pages)
            for commit in every:
                pages.update(commit.pages)
                db_pages = commit.db_pages
            pages = {n: p for n, p in pages.items() if n <= db_pages}
        else:
            commits, end, page_size, _ = read_wal_commits(wal, obj.offset)
            if not commits:
                return None
            pages = {}
            for commit in commits:
                pages.update(commit.pages)
            db_pages = commits[-1].db_pages
        obj.offset = end
        return whole, pages, db_pages, page_size

    async def _ship(
        self,
        obj: _Object,
        *,
        alarm: int | None,
        alarm_changed: bool,
        name: str | None,
        clear_restore: bool = False,
    ) -> None:
        """Make the local commits since the last shipment durable in PostgreSQL."""
        if obj.lost is not None:
            raise LeaseLostError(
                namespace=obj.key[0], object_id=obj.key[1], epoch=obj.epoch
            )
        conn = obj.conn
        if conn is None:
            return
        changes = self._changes(obj)
        if changes is None:
            return
        whole, pages, db_pages, page_size = changes
        (holds,) = conn.execute(HOLDS_DATA).fetchone()
        data = _pack(pages)
        seq = obj.head + 1
        now = self._now_ms()
        namespace, object_id = obj.key
        owner, epoch = self._owner, obj.epoch
        args = (
            namespace,
            object_id,
            seq,
            epoch,
            owner,
            bool(holds),
            name,
            now,
            whole,
            db_pages,
            page_size,
            data,
            alarm if alarm_changed else None,
            alarm_changed and alarm is None,
            clear_restore,
        )

        async def attempt(c: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
            if await c.fetchval(self._q(SHIP), *args) == 1:
                return
            # Nothing matched: an earlier attempt whose answer was lost
            # landed already, or another owner took the object.
            row = await c.fetchrow(self._q(HOLDER), namespace, object_id)
            if row is not None and (row[0], row[1], row[2]) == (owner, epoch, seq):
                return
            obj.lost = "its lease was taken over by another owner"
            raise LeaseLostError(namespace=namespace, object_id=object_id, epoch=epoch)

        await self._run(attempt)
        obj.head = seq
        obj.whole_next = False
        if whole:
            obj.snapshots.append((seq, now))
            obj.snapshot_bytes = len(data)
            obj.since_snapshot = 0
            await self._prune(obj, now)
        else:
            obj.since_snapshot += len(data)
        if obj.offset > _CHECKPOINT_BYTES and not conn.in_transaction:
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                obj.offset = 0

    async def _prune(self, obj: _Object, now: int) -> None:
        """Drop the log before the newest snapshot older than the retention."""
        cutoff = now - self._retention_ms
        keep = max((s for s, t in obj.snapshots if t <= cutoff), default=None)
        if keep is None or keep <= obj.snapshots[0][0]:
            return
        namespace, object_id = obj.key
        await self._run(lambda c: c.execute(self._q(PRUNE), namespace, object_id, keep))
        obj.snapshots = [(s, t) for s, t in obj.snapshots if s >= keep]

    # -- the local copy (what SQLiteStore uses, see _sqlite_store.StoreBackend) --

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, factory=_Connection)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = OFF")
            # Only this backend checkpoints, after shipping the frames.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            create_tables(conn, RESERVED_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _held(self, key: _Key) -> _Object:
        obj = self._objects.get(key)
        if obj is None:
            raise StorageError(
                f"the storage of Durable Object {key[0]}/{key[1]} is not active "
                "(await its store's activate() first)"
            )
        return obj

    def _acquire(self, key: _Key, *, create: bool) -> sqlite3.Connection | None:
        obj = self._held(key)
        if obj.conn is not None:
            return obj.conn
        exists = os.path.exists(obj.path)
        if not exists and not create:
            return None
        if self._read_only and not exists:  # pragma: no cover - inspect reads only
            return None
        try:
            obj.conn = self._connect(obj.path)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the local copy {obj.path}: {exc}") from exc
        if not exists:
            obj.whole_next = True  # a new database: ship all of it
        return obj.conn

    def _discard(self, key: _Key) -> None:
        if self._read_only:
            # Keep the copy for the next reader (inspect opens an object
            # several times); activating checks it is still the last commit.
            return
        self._drop(key)

    def _drop(self, key: _Key) -> None:
        obj = self._objects.pop(key, None)
        if obj is None:
            return
        if obj.conn is not None:
            conn, obj.conn = obj.conn, None
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            conn.close()
        _remove_database(obj.path)
        if not self._read_only and obj.lost is None:
            self._releases.append((key, obj.epoch))
            if self._wake is not None:
                self._wake.set()

    def _committed(self, key: _Key, conn: sqlite3.Connection) -> None:
        """Nothing to do locally: :meth:`PostgresStore.commit` ships next."""

    def _index_set(self, key: _Key, time_ms: int) -> None:
        """The alarms table is written by the commit itself."""

    def _index_clear(self, key: _Key) -> None:
        """The alarms table is written by the commit itself."""

    def _history_for(
        self, key: _Key
    ) -> tuple[sqlite3.Connection, History]:  # pragma: no cover - never called
        raise StorageError("the history of PostgresBackend lives in PostgreSQL")


def _execute(statement: str, *args: object) -> Callable[[Any], Awaitable[Any]]:
    """An operation for :meth:`PostgresBackend._run`: one statement, its status."""

    async def op(conn: Any) -> Any:
        return await conn.execute(statement, *args)

    return op


def _on_this_loop(pool: Any) -> bool:
    """True if *pool* belongs to the running event loop."""
    import asyncio  # noqa: TID251 - asyncpg runs on asyncio only

    loop = getattr(pool, "_loop", None)
    return loop is None or loop is asyncio.get_running_loop()


def _alarm_entries(rows: Sequence[Any]) -> list[AlarmEntry]:
    """Alarm rows (namespace, id, time, retry count, retry time) as entries."""
    return [
        AlarmEntry(
            namespace=row[0],
            object_id=row[1],
            time_ms=int(row[2]),
            retry_count=int(row[3]),
            retry_ms=None if row[4] is None else int(row[4]),
        )
        for row in rows
    ]


def _pause(attempt: int) -> float:
    return float(min(0.05 * 3**attempt, 2.0))


def _remove_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


@typing.final
class PostgresStore:
    """One object's storage in a :class:`PostgresBackend`.

    Reads and the local half of a commit run on the object's local SQLite
    copy, exactly as on :class:`~pyobjects.storage.SQLiteBackend`; a commit
    then ships what changed to PostgreSQL before it returns.
    """

    __slots__ = ("_backend", "_key", "_local", "restored_alarm")

    def __init__(self, backend: PostgresBackend, key: _Key) -> None:
        self._backend = backend
        self._key = key
        self._local = SQLiteStore(backend, key)
        # Set (to the restored alarm, maybe None) when activating applied a
        # scheduled point-in-time restore; the runtime reschedules it then.
        self.restored_alarm: int | bool | None = False

    async def activate(self) -> None:
        """Take the object's lease and rebuild its local copy (may suspend).

        Raises:
            LeaseHeldError: Another owner holds the object.
            StorageUnavailableError: PostgreSQL cannot be reached.
        """
        _, restored = await self._backend._activate(self._key)
        if restored is not False:
            self.restored_alarm = restored

    async def _ready(self) -> _Object:
        obj = self._backend._objects.get(self._key)
        if obj is None:
            await self.activate()
            obj = self._backend._held(self._key)
        return obj

    async def get(self, keys: Sequence[str], /) -> dict[str, bytes]:
        await self._ready()
        return await self._local.get(keys)

    async def list(self, query: ListQuery, /) -> list[tuple[str, bytes]]:
        await self._ready()
        return await self._local.list(query)

    async def get_alarm(self) -> int | None:
        await self._ready()
        return await self._local.get_alarm()

    async def get_name(self) -> str | None:
        obj = await self._ready()
        if obj.conn is None and not os.path.exists(obj.path):  # noqa: ASYNC240
            return None
        return await self._local.get_name()

    async def commit(self, batch: WriteBatch, /) -> None:
        obj = await self._ready()
        if obj.lost is not None:
            raise LeaseLostError(
                namespace=self._key[0], object_id=self._key[1], epoch=obj.epoch
            )
        if self._backend._read_only:
            raise StorageError("this PostgresBackend only reads (pyobjects inspect)")
        await self._local.commit(batch)
        try:
            await self._backend._ship(
                obj,
                alarm=batch.alarm,
                alarm_changed=batch.alarm_changed,
                name=batch.name,
            )
        except BaseException:
            # The local copy is ahead of PostgreSQL now: it must never be
            # read again. The object resets; its next start rebuilds.
            if obj.lost is None:
                obj.lost = "a commit could not be made durable"
            raise

    def sql_connection(self, *, create: bool = True) -> sqlite3.Connection | None:
        """Return the object's local database connection (the SQL capability)."""
        return self._backend._acquire(self._key, create=create)

    async def current_bookmark(self) -> str:
        """A bookmark for the state after the last commit."""
        obj = await self._ready()
        if not self._backend._retention_ms:
            raise StorageError(_NO_PITR)
        return bookmark(*self._key, obj.head)

    async def bookmark_for_time(self, when_ms: int, now_ms: int) -> str:
        """A bookmark for the state at *when_ms* (epoch ms)."""
        await self._ready()
        backend = self._backend
        if not backend._retention_ms:
            raise StorageError(_NO_PITR)
        check_bookmark_time(backend._retention_ms, when_ms, now_ms)
        namespace, object_id = self._key
        seq = await backend._run(
            lambda c: c.fetchval(
                backend._q(
                    "SELECT max(seq) FROM {s}.commits WHERE namespace = $1"
                    " AND object_id = $2 AND time_ms <= $3"
                ),
                namespace,
                object_id,
                min(when_ms, now_ms),
            )
        )
        if seq is None:
            raise ValueError(
                "get_bookmark_for_time(): this object has no history that old "
                "(it was created later, or history was kept only since then)"
            )
        return bookmark(*self._key, int(seq))

    async def schedule_restore(self, text: str, now_ms: int) -> str:
        """Restore to *text* when the object next starts; return the undo bookmark."""
        obj = await self._ready()
        backend = self._backend
        if not backend._retention_ms:
            raise StorageError(_NO_PITR)
        seq, kind = parse_bookmark(*self._key, text)
        namespace, object_id = self._key
        s = f'"{backend._schema}"'
        if kind == UNDO:
            undone = await backend._run(
                lambda c: c.fetchval(
                    f"SELECT value FROM {s}.marks WHERE namespace = $1"
                    " AND object_id = $2 AND key = $3",
                    namespace,
                    object_id,
                    f"undo:{seq}",
                )
            )
            seq = obj.head if undone is None else int(undone)
        kept = await backend._run(
            lambda c: c.fetchval(
                f"SELECT count(*) FROM {s}.commits WHERE namespace = $1"
                " AND object_id = $2 AND seq = $3",
                namespace,
                object_id,
                seq,
            )
        )
        # The state at the retention cutoff is the oldest one kept (as on
        # SQLite, where older history is folded into it).
        floor = await backend._run(
            lambda c: c.fetchval(
                f"SELECT max(seq) FROM {s}.commits WHERE namespace = $1"
                " AND object_id = $2 AND time_ms <= $3",
                namespace,
                object_id,
                now_ms - backend._retention_ms,
            )
        )
        if not kept or (floor is not None and seq < int(floor)):
            raise ValueError(
                f"bookmark {text!r} is older than the history kept (pitr_retention)"
            )
        latest = obj.head
        done = await backend._run(
            lambda c: c.execute(
                f"UPDATE {s}.objects SET restore = $3 WHERE namespace = $1"
                " AND object_id = $2 AND owner = $4 AND epoch = $5",
                namespace,
                object_id,
                f"{seq}:{latest}",
                backend._owner,
                obj.epoch,
            )
        )
        if done != "UPDATE 1":
            obj.lost = "its lease was taken over by another owner"
            raise LeaseLostError(
                namespace=namespace, object_id=object_id, epoch=obj.epoch
            )
        return bookmark(*self._key, latest, UNDO)

    def close(self) -> None:
        """Close the local copy and give the lease back; the data stays."""
        self._backend._discard(self._key)


def read_only_postgres(dsn: str, *, schema: str = "pyobjects") -> PostgresBackend:
    """A backend that only reads (for ``pyobjects inspect --postgres``).

    It takes no lease, so it may read while other processes run the
    objects; each object is rebuilt from its last commit.
    """
    backend = PostgresBackend(dsn, schema=schema, pitr_retention=0)
    backend._read_only = True
    return backend
