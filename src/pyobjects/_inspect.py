"""Read-only inspection of stored Durable Objects (``pyobjects inspect``).

Works through the backend protocol (``open``, ``list_object_ids`` and the
object store's ``list``/``get_alarm``/``get_name``), plus the built-in
backends' read-only ``list_namespaces()``. Nothing here writes.
"""

from __future__ import annotations

import base64
import datetime
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._serialization import decode_stored
from .storage._base import USER_OBJECTS_WHERE, ListQuery

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .storage._base import StorageBackend
    from .storage._sql import SqlValue

__all__ = [
    "AmbiguousObjectError",
    "ObjectSummary",
    "StoredType",
    "TableSummary",
    "Undecodable",
    "dump_object",
    "find_object",
    "format_alarm",
    "jsonable",
    "list_namespaces",
    "prepare",
    "run_query",
    "sql_tables",
    "summarize",
    "summarize_objects",
    "summary_json",
    "table_rows",
]

# What a read-only query may do (sqlite3 authorizer action codes): read
# tables, call functions, recurse in a CTE. Anything else is refused.
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, 33}
)  # 33 = SQLITE_RECURSIVE (not exported by every Python's sqlite3)


class AmbiguousObjectError(ValueError):
    """An id prefix matches several stored objects."""


class _ListsNamespaces(Protocol):
    async def list_namespaces(self) -> list[str]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectSummary:
    """What ``pyobjects inspect`` shows for one stored object."""

    namespace: str
    object_id: str
    name: str | None
    keys: int
    size: int  # bytes of keys (UTF-8) plus encoded values
    alarm: int | None  # epoch milliseconds


@dataclass(frozen=True, slots=True)
class StoredType:
    """A stored value of a class registered with ``register_type``, as stored.

    The inspector shows the stored name, version and state (a dict of
    fields, an enum member's value) without importing or calling the class.
    """

    name: str
    version: int
    state: Any

    def __repr__(self) -> str:
        return f"<{self.name} v{self.version}: {self.state!r}>"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A stored value the codec cannot read back."""

    size: int
    error: str

    def __repr__(self) -> str:
        return f"<undecodable: {self.size} bytes, {self.error}>"


async def list_namespaces(backend: StorageBackend) -> list[str]:
    """Return the namespaces of *backend*.

    Raises:
        TypeError: If the backend cannot list its namespaces.
    """
    lister = getattr(backend, "list_namespaces", None)
    if lister is None:
        raise TypeError(f"{type(backend).__name__} cannot list its namespaces")
    checked: _ListsNamespaces = backend  # type: ignore[assignment]
    return await checked.list_namespaces()


async def _summary(
    backend: StorageBackend, namespace: str, object_id: str
) -> tuple[ObjectSummary, list[tuple[str, bytes]]]:
    store = backend.open(namespace, object_id)
    try:
        items = await store.list(ListQuery())
        alarm = await store.get_alarm()
        name = await store.get_name()
    finally:
        store.close()
    size = sum(len(key.encode("utf-8", "surrogatepass")) + len(v) for key, v in items)
    summary = ObjectSummary(
        namespace=namespace,
        object_id=object_id,
        name=name,
        keys=len(items),
        size=size,
        alarm=alarm,
    )
    return summary, items


async def summarize(
    backend: StorageBackend, namespaces: list[str] | None = None
) -> list[ObjectSummary]:
    """Summarize every object holding data, namespace by namespace."""
    if namespaces is None:
        namespaces = await list_namespaces(backend)
    summaries = []
    for namespace in namespaces:
        ids = await backend.list_object_ids(namespace)
        summaries += await summarize_objects(backend, namespace, ids)
    return summaries


async def summarize_objects(
    backend: StorageBackend, namespace: str, object_ids: Sequence[str]
) -> list[ObjectSummary]:
    """Summarize the given objects of *namespace*, in that order."""
    return [(await _summary(backend, namespace, i))[0] for i in object_ids]


def format_alarm(alarm: int | None) -> str:
    """*alarm* (epoch milliseconds) in ISO 8601, UTC, or ``-`` for none."""
    if alarm is None:
        return "-"
    when = datetime.datetime.fromtimestamp(alarm / 1000, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summary_json(summary: ObjectSummary) -> dict[str, Any]:
    """*summary* as a JSON object (``inspect --json`` and the web inspector)."""
    return {
        "namespace": summary.namespace,
        "id": summary.object_id,
        "name": summary.name,
        "keys": summary.keys,
        "size": summary.size,
        "alarm": summary.alarm,
    }


async def find_object(backend: StorageBackend, namespace: str, ref: str) -> str | None:
    """Return the id of the object *ref* names: its name, its id or an id prefix.

    Raises:
        AmbiguousObjectError: If *ref* is a prefix of several ids (and no name).
    """
    ids = await backend.list_object_ids(namespace)
    if ref.lower() in ids:
        return ref.lower()
    for object_id in ids:
        store = backend.open(namespace, object_id)
        try:
            if await store.get_name() == ref:
                return object_id
        finally:
            store.close()
    if len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref.lower()):
        matches = [object_id for object_id in ids if object_id.startswith(ref.lower())]
        if len(matches) > 1:
            raise AmbiguousObjectError(
                f"{ref!r} is the start of {len(matches)} object ids in "
                f"{namespace!r}; give more digits"
            )
        if matches:
            return matches[0]
    return None


async def dump_object(
    backend: StorageBackend, namespace: str, object_id: str
) -> tuple[ObjectSummary, list[tuple[str, Any]]]:
    """Return the object's summary and its keys with decoded values."""
    summary, items = await _summary(backend, namespace, object_id)
    decoded: list[tuple[str, Any]] = []
    for key, data in items:
        try:
            value = decode_stored(data, StoredType)
        except Exception as exc:  # any codec failure: show it, keep going
            value = Undecodable(len(data), f"{type(exc).__name__}: {exc}")
        decoded.append((key, value))
    return summary, decoded


@dataclass(frozen=True, slots=True, kw_only=True)
class TableSummary:
    """One SQL table of an object: its schema and how many rows it holds."""

    name: str
    sql: str
    rows: int


async def prepare(backend: StorageBackend, namespace: str, object_id: str) -> None:
    """Make the object's SQL database readable by the (synchronous) SQL helpers.

    A server-backed store (PostgreSQL) rebuilds the object's database from
    the server first; on local backends this does nothing.
    """
    store: Any = backend.open(namespace, object_id)
    activate = getattr(store, "activate", None)
    if activate is not None:
        await activate()


def _connection(backend: StorageBackend, namespace: str, object_id: str) -> Any:
    store: Any = backend.open(namespace, object_id)
    opener = getattr(store, "sql_connection", None)
    conn = None if opener is None else opener(create=False)
    return store, conn


def sql_tables(
    backend: StorageBackend, namespace: str, object_id: str
) -> list[TableSummary]:
    """The object's own SQL tables (not the reserved ``_cf_`` ones), by name."""
    store, conn = _connection(backend, namespace, object_id)
    try:
        if conn is None:
            return []
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND "
            f"{USER_OBJECTS_WHERE} ORDER BY name"
        ).fetchall()
        tables = []
        for name, sql in rows:
            quoted = '"' + str(name).replace('"', '""') + '"'
            (count,) = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()
            tables.append(TableSummary(name=name, sql=sql, rows=count))
        return tables
    finally:
        store.close()


def table_rows(
    backend: StorageBackend,
    namespace: str,
    object_id: str,
    table: str,
    *,
    offset: int,
    limit: int,
) -> tuple[TableSummary, list[str], list[tuple[Any, ...]]] | None:
    """One page of a user table's rows: (table, columns, rows), or None if none.

    Rows come in the table's storage order (rowid, or the primary key of a
    ``WITHOUT ROWID`` table): what a full scan gives, stable between pages.
    """
    store, conn = _connection(backend, namespace, object_id)
    try:
        if conn is None:
            return None
        found = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ? AND "
            f"{USER_OBJECTS_WHERE}",
            (table,),
        ).fetchone()
        if found is None:
            return None
        quoted = '"' + table.replace('"', '""') + '"'
        (count,) = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()
    finally:
        store.close()
    columns, rows = run_query(
        backend,
        namespace,
        object_id,
        f"SELECT * FROM {quoted} LIMIT ? OFFSET ?",
        (limit, offset),
    )
    return TableSummary(name=table, sql=found[0], rows=count), columns, rows


def _read_only(action: int, *args: object) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def run_query(
    backend: StorageBackend,
    namespace: str,
    object_id: str,
    sql: str,
    params: Sequence[SqlValue] = (),
    *,
    max_rows: int | None = None,
    timeout: float | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only statement in the object's database: (columns, rows).

    Args:
        backend: A backend opened with ``read_only_backend()``.
        namespace: The object's namespace.
        object_id: The object's id.
        sql: One statement; only reads are authorized.
        params: Values for the statement's ``?`` placeholders.
        max_rows: Fetch at most this many rows (all of them by default).
        timeout: Interrupt the statement after this many seconds (an
            endless recursive CTE is a read too).

    Raises:
        ValueError: If the object has no SQL database, or the statement is
            not a single read (SQLite's error, e.g. "not authorized"), or it
            ran out of time ("interrupted").
    """
    store, conn = _connection(backend, namespace, object_id)
    try:
        if conn is None:
            raise ValueError(f"object {object_id} has no SQL database")
        conn.set_authorizer(_read_only)
        if timeout is not None:
            deadline = time.monotonic() + timeout
            # A non-zero return makes SQLite abort the statement (SQLITE_INTERRUPT).
            conn.set_progress_handler(lambda: time.monotonic() >= deadline, 1000)
        try:
            cursor = conn.execute(sql, params)
            columns = [d[0] for d in cursor.description or ()]
            if max_rows is None:
                rows = cursor.fetchall()
            else:
                rows = cursor.fetchmany(max_rows)
                cursor.close()  # the rest is never computed
        except sqlite3.Error as exc:
            raise ValueError(f"cannot run that query: {exc}") from None
        finally:
            conn.set_authorizer(None)
            conn.set_progress_handler(None, 0)
        return columns, rows
    finally:
        store.close()


def jsonable(value: Any) -> Any:
    """*value* as JSON can hold it; bytes and other types are tagged objects."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}  # JSON has no inf nor nan
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (datetime.datetime, datetime.date)):
        return {"$datetime": value.isoformat()}
    if isinstance(value, StoredType):
        return {
            "$type": value.name,
            "$version": value.version,
            "$state": jsonable(value.state),
        }
    return {"$repr": repr(value)}
