"""The SQL side of the storage front end: ``ctx.storage.sql`` and its transaction.

:class:`SqlFacets` is a part of :class:`~pyobjects.storage._api.Storage` (its
base class), kept apart so that each module stays one concept: how the
object's SQLite transaction follows the front end's layers (the implicit
transaction, the savepoints of ``transaction()`` and ``transaction_sync()``),
and what happens when SQLite ends that transaction on its own.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, TypeVar

from pyobjects._aliases import camel_aliases
from pyobjects._errors import DurableObjectResetError, StorageError, TransactionError

from ._layers import _Layer, in_transaction
from ._sql import SqlStorage, wipe_database

if TYPE_CHECKING:
    import builtins
    import sqlite3
    from collections.abc import Callable

    from ._base import ObjectStore
    from ._front import StorageOwner

__all__ = ["SqlFacets"]

T = TypeVar("T")

_NO_SQL = (
    "This Durable Object is not backed by SQLite storage, so the SQL API is not "
    "available: its storage backend ({}) does not provide SQL databases. "
    "MemoryBackend and SQLiteBackend do."
)
_OTHER_TRANSACTION = (
    "{} cannot run while another event's transaction is open on this object: "
    "SQL has one transaction per object (this happens when an event that was "
    "already running resumes while a later event is inside storage.transaction())"
)


@camel_aliases("transaction_sync")
class SqlFacets:
    """``ctx.storage.sql``, ``transaction_sync()`` and the SQL transaction."""

    __slots__ = ("_sql",)

    _sql: SqlStorage | None  # set by Storage.__init__

    if TYPE_CHECKING:  # provided by Storage
        _store: ObjectStore
        _owner: StorageOwner
        _layers: builtins.list[_Layer]
        _inflight: builtins.list[_Layer] | tuple[()]

        def _record(self) -> _Layer: ...
        def _close_layer(self, layer: _Layer, commit: bool) -> None: ...

    @property
    def sql(self) -> SqlStorage:
        """The object's SQL database (``ctx.storage.sql``).

        Raises:
            StorageError: The storage backend provides no SQL databases.
        """
        if self._sql is None:
            if not self._has_sql:
                raise StorageError(_NO_SQL.format(type(self._store).__name__))
            self._sql = SqlStorage(self)
        return self._sql

    def transaction_sync(self, fn: Callable[[], T], /) -> T:
        """Run ``fn()`` in a savepoint of the object's database (``transactionSync``).

        KV and SQL changes made by *fn* are kept if it returns and rolled back
        if it raises (the exception propagates; the object is not reset).
        Nestable, also inside :meth:`transaction`. The changes commit with
        the object's other writes; they are not separately durable. *fn* must
        be synchronous: if it returns an awaitable, that is closed unrun, the
        savepoint is rolled back and ``TypeError`` is raised.

        Raises:
            StorageError: The storage backend provides no SQL databases
                ("Durable Object is not backed by SQL.").
        """
        self._owner.check_usable()
        if not self._has_sql:
            raise StorageError("Durable Object is not backed by SQL.")
        sql = self.sql
        layers = self._layers
        if len(layers) > 1 and self not in in_transaction.get():
            raise TransactionError(_OTHER_TRANSACTION.format("transaction_sync()"))
        conn = sql._connection()
        layer = _Layer()
        layer.sync = True
        layers.append(layer)
        token = in_transaction.set(in_transaction.get() | {self})
        try:
            try:
                self._sql_enter(conn, need_transaction=True)
            except BaseException:
                layers.pop()
                raise
            try:
                result = fn()
            except BaseException:
                self._close_layer(layer, commit=False)
                raise
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                self._close_layer(layer, commit=False)
                raise TypeError(
                    "transaction_sync() takes a synchronous function, but "
                    f"{getattr(fn, '__qualname__', fn)!r} returned an awaitable; "
                    "its changes were rolled back (use `await "
                    "storage.transaction(fn)` for async code)"
                )
            self._close_layer(layer, commit=True)
            return result
        finally:
            in_transaction.reset(token)

    @property
    def _has_sql(self) -> bool:
        """True if the backend offers the SQL capability (``SqlObjectStore``)."""
        return getattr(self._store, "sql_connection", None) is not None

    def _sql_enter(self, conn: sqlite3.Connection, *, need_transaction: bool) -> bool:
        """Prepare *conn* for a user statement; return True if it began a transaction.

        Opens the object's implicit transaction when the statement may write,
        and the savepoints of the transactions this task is inside.
        """
        layers = self._layers
        if len(layers) > 1 and self not in in_transaction.get():
            raise TransactionError(_OTHER_TRANSACTION.format("sql.exec()"))
        began = False
        if need_transaction and not conn.in_transaction:
            conn.execute("BEGIN")
            began = True
        if len(layers) > 1 and conn.in_transaction:
            for depth, layer in enumerate(layers[1:]):
                if layer.savepoint is None:
                    kind = "_cf_sync_savepoint_" if layer.sync else "_cf_savepoint_"
                    conn.execute(f"SAVEPOINT {kind}{depth}")
                    layer.savepoint = f"{kind}{depth}"
        return began

    def _sql_wrote(self) -> None:
        """A user statement changed the database: it commits with the next batch."""
        layer = self._record()
        layer.sql_dirty = True

    def _sql_dirty(self) -> bool:
        """True while the open SQL transaction holds changes or savepoints."""
        return any(layer.sql_dirty or layer.savepoint for layer in self._layers)

    def _sql_rolled_back(self, cause: BaseException) -> None:
        """SQLite ended the object's transaction inside a user statement.

        ``INSERT OR ROLLBACK``, ``ON CONFLICT ROLLBACK``, ``RAISE(ROLLBACK,
        ...)`` and an interrupted write roll back the whole transaction, not
        only the statement. If it held SQL writes of the pending batch (or of
        one being committed), those are gone while the batch's KV writes are
        not, and what callers were told is lost: reset the object, so that
        nothing of the batch commits, and raise the reset error. Otherwise
        only the failed statement was undone: forget the savepoints SQLite
        dropped with the transaction, and let its error propagate.
        """
        if not any(layer.sql_dirty for layer in (*self._layers, *self._inflight)):
            for layer in self._layers[1:]:
                layer.savepoint = None
            return
        error = DurableObjectResetError(
            f"SQLite rolled back the Durable Object's transaction ({cause}), "
            "discarding SQL writes not yet committed, so the object was reset: "
            "no write of the batch is kept. INSERT OR ROLLBACK, UPDATE OR "
            "ROLLBACK, ON CONFLICT ROLLBACK and RAISE(ROLLBACK, ...) end the "
            "whole transaction; use ABORT (the default), FAIL or IGNORE, which "
            "undo one statement."
        )
        error.__cause__ = cause
        self._owner.reset(error)
        self._owner.check_usable()

    def _wipe_sql(self) -> bool:
        """Drop every user table, view, index and trigger (for delete_all()).

        Returns True if something was dropped (the open transaction then
        holds changes to commit).
        """
        if not self._has_sql:
            return False
        conn = self.sql._connection(create=False)
        if conn is None:
            return False
        self.sql._settle()  # an unfinished statement would lock its table
        return wipe_database(conn, lambda: self._sql_enter(conn, need_transaction=True))
