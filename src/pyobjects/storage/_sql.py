"""``ctx.storage.sql``: the SQL API of an object's private SQLite database.

The backend hands out a plain ``sqlite3.Connection`` per object (see
``SqlObjectStore`` in :mod:`pyobjects.storage._base`); the rules about what
user SQL may do are in :mod:`pyobjects.storage._sql_rules` (workerd's
authorizer, limits and allowlists), and this module applies them:

- the authorizer restricts only statements prepared while user SQL runs; the
  backend's own statements run unrestricted. User SQL text is always executed
  with a suffix (see :data:`_USER_SUFFIX`), so it can never hit a statement
  the backend prepared (SQLite's statement cache is keyed by the SQL text,
  and a cached statement is not authorized again);
- a statement that may rename a table runs in a savepoint, and is undone and
  refused if the schema gained a reserved name (SQLite does not tell the
  authorizer a RENAME's new name);
- every call into SQLite for user SQL has a time limit, enforced by the
  progress handler (``SqlTimeoutError``);
- foreign keys are ON.

Statements run at ``exec()`` time inside the object's implicit transaction,
which commits with the object's other writes (write coalescing and the output
gate apply to SQL as to KV). Whether a statement writes is learnt from the
authorizer when SQLite prepares it and remembered per SQL text; installing
the authorizer (once per instance) expires every prepared statement, so each
one is seen at least once. A statement that writes runs to the end at once; a
read is produced lazily as its cursor is read (see :mod:`._sql_cursor`).

If SQLite itself ends the transaction inside a user statement (``INSERT OR
ROLLBACK``, ``ON CONFLICT ROLLBACK``, ``RAISE(ROLLBACK, ...)``, an interrupt
during a write), the storage front end resets the object when the transaction
held writes of the batch: see ``Storage._sql_rolled_back``.
"""

from __future__ import annotations

import sqlite3
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, final, overload

from pyobjects._aliases import camel_aliases
from pyobjects._errors import SqlError, SqlTimeoutError

from ._base import USER_OBJECTS_WHERE
from ._sql_cursor import SqlCursor
from ._sql_rules import (
    LIMITS,
    TRANSACTION_ACTIONS,
    TRANSACTION_MESSAGE,
    authorize,
    is_blank,
    may_rename,
    not_authorized,
    reserved_names,
    sets_foreign_keys,
    split_statements,
    sql_error,
    writes,
)

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable

    from ._front import SqlFront

__all__ = ["SqlCursor", "SqlStorage", "SqlValue", "wipe_database"]

SqlValue = int | float | str | bytes | None

# Appended to user SQL: a comment, so it changes nothing but the cache key.
_USER_SUFFIX: Final = "\n"
_OK = sqlite3.SQLITE_OK
_STATEMENT_ERRORS = (sqlite3.Error, OverflowError, UnicodeEncodeError, MemoryError)
_PLAIN_TYPES: Final = frozenset([int, float, str, bytes, type(None)])
# SQL texts whose read/write classification is remembered (an unknown text
# just runs inside a transaction, which is always safe).
_MAX_CLASSIFIED = 4096
# SQLite virtual-machine instructions between two looks at the clock: about
# a millisecond of work, so the check costs well under 1% of a long statement.
PROGRESS_STEPS: Final = 10_000
# SqlStorage._started when no user SQL runs, and when it runs but the
# progress handler has not looked at the clock yet (clocks never go below 0).
_IDLE: Final = -1.0
_ARMED: Final = -2.0
# Rows of a read taken at exec() time; a result this long or longer is lazy.
_PREFETCH: Final = 64
# A statement that may rename a table runs inside this savepoint.
_RENAME_SAVEPOINT: Final = "_cf_rename_check"


_USER_OBJECTS = (
    "SELECT type, name, sql FROM sqlite_schema WHERE type IN ('table', 'view')"
    f" AND {USER_OBJECTS_WHERE}"
)


def wipe_database(conn: sqlite3.Connection, begin: Callable[[], object]) -> bool:
    """Drop every user object of *conn*'s database; True if there was one.

    *begin* opens the object's transaction first, so the drops commit (or
    roll back) with the rest of the batch. Views go first, then virtual
    tables (which take their shadow tables along), then the other tables;
    foreign keys are deferred so that the order of the tables does not
    matter. ``_cf_`` tables stay (the caller clears the KV data).
    """
    try:
        objects = conn.execute(_USER_OBJECTS).fetchall()
        sequence = conn.execute(
            "SELECT 1 FROM sqlite_schema"
            " WHERE name IN ('sqlite_sequence', 'sqlite_stat1')"
        ).fetchone()
        if not objects and sequence is None:
            return False
        begin()
        conn.execute("PRAGMA defer_foreign_keys = ON")
        order = {"view": 0, "table": 1}
        objects.sort(
            key=lambda row: (
                order[row[0]],
                0 if (row[2] or "").upper().startswith("CREATE VIRTUAL") else 1,
            )
        )
        for kind, name, _sql in objects:
            still = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE name = ?", (name,)
            ).fetchone()
            if still is not None:
                quoted = '"' + name.replace('"', '""') + '"'
                conn.execute(f"DROP {kind.upper()} {quoted}")
        for table in ("sqlite_sequence", "sqlite_stat1"):
            if conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE name = ?", (table,)
            ).fetchone():
                conn.execute(f"DELETE FROM {table}")
    except sqlite3.Error as exc:
        raise sql_error(exc) from exc
    return True


def _check_binding(index: int, value: object) -> None:
    """Refuse a binding of a type SQLite cannot take.

    Values of the right type that SQLite still refuses (an int outside 64
    bits, a str with a lone surrogate) are reported by ``_error`` from what
    ``sqlite3`` raises.
    """
    if value is None or isinstance(
        value, (int, float, str, bytes, bytearray, memoryview)
    ):
        return
    raise TypeError(
        "SQL bindings must be None, int, float, str or bytes; "
        f"binding {index} is {type(value).__name__}"
    )


def _in_transaction(conn: sqlite3.Connection) -> bool:
    """``conn.in_transaction``, False once the connection is closed."""
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError:
        return False


@final
@camel_aliases("database_size")
class SqlStorage:
    """``ctx.storage.sql``: run SQL against the object's private database.

    Mirrors ``SqlStorage`` in Workers. Built by the storage front end; the
    constructor is private.
    """

    __slots__ = (
        "__weakref__",
        "_auth_error",
        "_conn",
        "_foreign_keys",
        "_known",
        "_limit",
        "_now",
        "_open",
        "_sets_fk",
        "_started",
        "_storage",
        "_text",
        "_timed_out",
        "_untrusted",
        "_writes",
        "_wrote",
    )

    def __init__(self, storage: SqlFront) -> None:
        self._storage = storage
        self._conn: sqlite3.Connection | None = None
        # SQL text -> whether it writes (learnt from the authorizer).
        self._writes: dict[str, bool] = {}
        # Single-statement queries that ran: query -> (text run, writes).
        self._known: dict[str, tuple[str, bool]] = {}
        self._untrusted = False
        self._wrote = False
        self._auth_error: str | None = None
        # The statement time limit (seconds), the clock that measures it,
        # and when the progress handler first saw the call into SQLite for
        # user SQL now running (_IDLE: none runs; _ARMED: not seen yet).
        # Starting the clock there, not before each call, keeps the clock off
        # the hot path; it misses at most the first PROGRESS_STEPS
        # instructions.
        self._limit: float = storage._owner.sql_time_limit()
        self._now: Callable[[], float] = time.monotonic
        self._started = _IDLE
        self._timed_out = False
        self._text = ""  # the SQL text being prepared
        # SQL texts that set PRAGMA foreign_keys, and the setting to restore
        # on a connection the backend reopened.
        self._sets_fk: set[str] = set()
        self._foreign_keys = True
        # Lazy cursors not read to the end yet.
        self._open: weakref.WeakSet[SqlCursor] = weakref.WeakSet()

    # -- the connection --------------------------------------------------------

    @overload
    def _connection(self) -> sqlite3.Connection: ...
    @overload
    def _connection(self, *, create: bool) -> sqlite3.Connection | None: ...

    def _connection(self, *, create: bool = True) -> sqlite3.Connection | None:
        """The object's connection from the backend, configured for user SQL.

        Without *create*, ``None`` if the object has no database yet.
        """
        store: Any = self._storage._store
        conn: sqlite3.Connection | None = store.sql_connection(create=create)
        if conn is not None and conn is not self._conn:
            self._configure(conn)
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        for limit, value in LIMITS.items():
            conn.setlimit(limit, value)
        setconfig = getattr(conn, "setconfig", None)
        if setconfig is not None:  # pragma: no cover - Python 3.12+
            setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)  # type: ignore[attr-defined]
        if not conn.in_transaction:
            conn.execute(f"PRAGMA foreign_keys = {int(self._foreign_keys)}")
        # Installing an authorizer expires every prepared statement, so each
        # statement this instance runs is authorized (and classified) again.
        conn.set_authorizer(self._authorize)
        conn.set_progress_handler(self._progress, PROGRESS_STEPS)
        if hasattr(conn, "before_close"):
            # SQLiteBackend may close it (its LRU): read open cursors first.
            settle = weakref.WeakMethod(self._settle)
            conn.before_close = lambda: (method := settle()) and method()
        self._writes.clear()
        self._known.clear()
        self._conn = conn

    def _authorize(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        database: str | None,
        trigger: str | None,
    ) -> int:
        if not self._untrusted:
            return _OK  # the backend's and the front end's own statements
        if writes(action, arg1, arg2):
            self._wrote = True
        elif sets_foreign_keys(action, arg1, arg2):
            self._sets_fk.add(self._text)
        if action in TRANSACTION_ACTIONS:
            self._auth_error = TRANSACTION_MESSAGE
        return authorize(action, arg1, arg2, database)

    def _progress(self) -> int:
        """SQLite's progress handler: interrupt user SQL past its deadline."""
        started = self._started
        if started == _IDLE:
            return 0
        now = self._now()
        if started == _ARMED:
            self._started = now
        elif now - started > self._limit:
            self._timed_out = True
            return 1
        return 0

    def _guarded(
        self, conn: sqlite3.Connection, fn: Callable[..., Any], *args: Any, last: bool
    ) -> Any:
        """Call *fn* with *args*, which runs user SQL on *conn*, under every guard.

        The authorizer applies, the time limit runs, and a failure becomes
        the error to raise (after the storage learnt whether SQLite ended
        the object's transaction).
        """
        self._untrusted = True
        self._auth_error = None
        self._timed_out = False
        self._started = _ARMED
        try:
            return fn(*args)
        except _STATEMENT_ERRORS as exc:
            raise self._failure(conn, exc, last=last) from exc
        finally:
            self._untrusted = False
            self._started = _IDLE

    def _failure(
        self, conn: sqlite3.Connection, exc: BaseException, *, last: bool
    ) -> BaseException:
        """The error to raise for *exc*, once the storage learnt what it did."""
        error = self._error(exc, last=last)
        if (
            isinstance(exc, sqlite3.Error)
            and not isinstance(exc, sqlite3.ProgrammingError)
            and not _in_transaction(conn)
        ):
            # SQLite ended the transaction (a ROLLBACK conflict resolution,
            # an interrupted write): maybe the batch is torn.
            self._storage._sql_rolled_back(error)
        return error

    def _fetch(
        self, cursor: sqlite3.Cursor, size: int
    ) -> builtins.list[tuple[Any, ...]]:
        """Read up to *size* rows (0: all) of a lazy cursor, under the guards."""
        self._storage._owner.check_usable()
        conn = self._conn
        if conn is None or cursor.connection is not conn:
            raise _closed_error()
        try:
            rows: builtins.list[tuple[Any, ...]] = (
                self._guarded(conn, cursor.fetchmany, size, last=True)
                if size
                else self._guarded(conn, cursor.fetchall, last=True)
            )
        except SqlError as error:
            if isinstance(error.__cause__, sqlite3.ProgrammingError):
                raise _closed_error() from error.__cause__
            raise
        return rows

    def _settle(self) -> None:
        """Read every open lazy cursor to the end (before a commit, say)."""
        cursors = list(self._open)
        self._open.clear()
        for cursor in cursors:
            cursor._settle()

    def _drop_cursors(self) -> None:
        """Forget every open lazy cursor (the object was reset)."""
        cursors = list(self._open)
        self._open.clear()
        for cursor in cursors:
            cursor._drop(reset=True)

    # -- running SQL -------------------------------------------------------------

    def exec(self, query: str, /, *bindings: Any) -> SqlCursor:
        """Run *query* now and return a cursor over its results.

        Several ``;``-separated statements all run, in order; *bindings*
        apply to the last one, whose rows the cursor returns. ``?`` and
        ``?NNN`` placeholders bind by position. Python ``int`` binds as
        INTEGER, ``float`` as REAL, ``str`` as TEXT, ``bytes`` as BLOB and
        ``None`` as NULL. Changes commit with the object's other writes.

        Raises:
            SqlError: SQLite refused or failed the statement (``code`` names
                the SQLite result code), or the bindings do not match.
            SqlTimeoutError: A call into SQLite ran past the statement time
                limit (``Runtime(sql_statement_timeout=...)``).
            TypeError: A binding of an unsupported type.
            ValueError: An int outside 64 bits, or a str that is not UTF-8.
        """
        storage = self._storage
        storage._owner.check_usable()
        if type(query) is not str and not isinstance(query, str):
            raise TypeError(f"SQL query must be a str, not {type(query).__name__}")
        for value in bindings:
            if type(value) not in _PLAIN_TYPES:
                for index, value in enumerate(bindings, 1):
                    _check_binding(index, value)
                break
        known = self._known.get(query)
        conn = self._conn
        if known is not None and conn is not None and len(storage._layers) == 1:
            # The hot path: a single statement that ran before, outside any
            # transaction() (most calls). Same rules as below, fewer steps.
            try:
                in_transaction = conn.in_transaction
            except sqlite3.ProgrammingError:
                # The backend closed the connection (its LRU): the path
                # below reopens and configures it.
                in_transaction = None
            if in_transaction is not None:
                text, wrote = known
                if wrote and not in_transaction:
                    conn.execute("BEGIN")
                changes = conn.total_changes
                # _guarded() and _cursor(), inlined.
                self._untrusted = True
                self._auth_error = None
                self._timed_out = False
                self._started = _ARMED
                try:
                    cursor = conn.execute(text, bindings)
                    description = cursor.description
                    if description is None:
                        rows = []
                    elif wrote:
                        rows = cursor.fetchall()
                    else:
                        rows = cursor.fetchmany(_PREFETCH)
                except _STATEMENT_ERRORS as exc:
                    raise self._failure(conn, exc, last=True) from exc
                finally:
                    self._untrusted = False
                    self._started = _IDLE
                    if (
                        wrote
                        and not storage._layers[0].sql_dirty
                        and _in_transaction(conn)
                    ):
                        storage._sql_wrote()
                written = conn.total_changes - changes
                if description is None:
                    return SqlCursor([], rows, written)
                names = [d[0] for d in description]
                if wrote or len(rows) < _PREFETCH:
                    return SqlCursor(names, rows, written)
                return self._lazy(names, rows, written, cursor)
        conn = self._connection()
        pieces = split_statements(query) if ";" in query else [query]
        if len(pieces) > 1 and not pieces[-1].strip():
            pieces.pop()  # blanks after the last semicolon
        # As in workerd, the statements run in order until one piece holds
        # none (a comment, a stray semicolon), which fails the call.
        changes = conn.total_changes
        for piece in pieces[:-1]:
            if is_blank(piece):
                raise SqlError("SQL code did not contain a statement.")
            self._run(conn, piece, (), last=False)
        if is_blank(pieces[-1]):
            raise SqlError("SQL code did not contain a statement.")
        cursor, wrote = self._run(conn, pieces[-1], bindings)
        result = self._cursor(conn, cursor, wrote, changes)
        text = pieces[0] + _USER_SUFFIX
        if len(pieces) == 1 and not may_rename(pieces[0]) and text not in self._sets_fk:
            classified = self._writes.get(text)
            if classified is not None:
                if len(self._known) >= _MAX_CLASSIFIED:
                    self._known.clear()
                self._known[query] = (text, classified)
        return result

    def _cursor(
        self,
        conn: sqlite3.Connection,
        cursor: sqlite3.Cursor,
        wrote: bool,
        changes: int,
    ) -> SqlCursor:
        """The cursor exec() returns for the last statement's *cursor*."""
        description = cursor.description
        if description is None:
            return SqlCursor([], [], conn.total_changes - changes)
        names = [d[0] for d in description]
        if wrote:
            # A write runs to the end now: its rows (RETURNING) are kept.
            rows = self._guarded(conn, cursor.fetchall, last=True)
            return SqlCursor(names, rows, conn.total_changes - changes)
        # A read: the first rows now (most results are that small), the rest
        # as the cursor is read.
        rows = self._guarded(conn, cursor.fetchmany, _PREFETCH, last=True)
        if len(rows) < _PREFETCH:
            return SqlCursor(names, rows, conn.total_changes - changes)
        return self._lazy(names, rows, conn.total_changes - changes, cursor)

    def _lazy(
        self,
        names: builtins.list[str],
        rows: builtins.list[tuple[Any, ...]],
        written: int,
        cursor: sqlite3.Cursor,
    ) -> SqlCursor:
        """A cursor over *rows*, then what *cursor* has left."""
        result = SqlCursor(names, rows, written, cursor=cursor, source=self)
        self._open.add(result)
        return result

    def _error(self, exc: BaseException, *, last: bool) -> SqlError | ValueError:
        """The error to raise for what running a user statement raised."""
        if isinstance(exc, OverflowError):
            return ValueError(
                f"an SQL binding is outside SQLite's 64-bit INTEGER range ({exc})"
            )
        if isinstance(exc, MemoryError):
            # SQLite reports a statement over SQLITE_LIMIT_VDBE_OP (25,000
            # instructions) as out of memory.
            return SqlError(
                "statement too big (over 25,000 SQLite instructions, or out of "
                "memory): SQLITE_NOMEM"
            )
        if isinstance(exc, UnicodeEncodeError):
            return ValueError(
                f"an SQL binding cannot be encoded as UTF-8 (lone surrogate): {exc}"
            )
        if isinstance(exc, sqlite3.ProgrammingError):
            if "number of bindings" in str(exc):
                return SqlError(
                    "Wrong number of parameter bindings for SQL query."
                    if last
                    else "When executing multiple SQL statements in a single call, "
                    "only the last statement can have parameters."
                )
            return sql_error(exc)
        assert isinstance(exc, sqlite3.Error)
        if self._timed_out:
            return SqlTimeoutError(limit=self._limit)
        if self._auth_error is not None:
            return SqlError(self._auth_error)
        return sql_error(exc)

    def _run(
        self,
        conn: sqlite3.Connection,
        piece: str,
        bindings: tuple[Any, ...],
        *,
        last: bool = True,
    ) -> tuple[sqlite3.Cursor, bool]:
        """Run one statement of user SQL; return its cursor and whether it writes."""
        storage = self._storage
        text = piece + _USER_SUFFIX
        known = self._writes.get(text)
        renames = may_rename(piece)
        began = storage._sql_enter(conn, need_transaction=known is not False or renames)
        before: set[str] = set()
        if renames:
            before = reserved_names(conn)
            conn.execute(f"SAVEPOINT {_RENAME_SAVEPOINT}")
        self._wrote = False
        self._text = text
        prepared = False
        try:
            cursor: sqlite3.Cursor = self._guarded(
                conn, conn.execute, text, bindings, last=last
            )
            prepared = True
            if renames:
                self._check_renamed(conn, before)
        finally:
            wrote = self._wrote if known is None else known
            if known is None and prepared:
                # Only a statement that compiled is classified for good
                # ("no such table" may stop SQLite before the INSERT).
                if len(self._writes) >= _MAX_CLASSIFIED:
                    self._writes.clear()  # SQL built by string formatting
                self._writes[text] = wrote
            if _in_transaction(conn):
                if renames and not prepared:
                    conn.execute(f"RELEASE {_RENAME_SAVEPOINT}")
                if wrote:
                    storage._sql_wrote()
                elif began and not storage._sql_dirty():
                    # A read needed no transaction after all: end it at once.
                    conn.execute("ROLLBACK")
        if text in self._sets_fk:
            cursor = self._set_foreign_keys(conn, text, bindings, cursor, last=last)
        return cursor, wrote

    def _set_foreign_keys(
        self,
        conn: sqlite3.Connection,
        text: str,
        bindings: tuple[Any, ...],
        cursor: sqlite3.Cursor,
        *,
        last: bool,
    ) -> sqlite3.Cursor:
        """Make ``PRAGMA foreign_keys = ...`` take effect outside a transaction.

        SQLite ignores it inside one. It is no write, so it runs outside the
        object's transaction unless that holds writes (then, as in SQLite,
        it does nothing); run for the first time, it ran in a transaction
        opened to learn what it does, so it runs again now that this ended.
        """
        if not _in_transaction(conn):
            cursor = self._guarded(conn, conn.execute, text, bindings, last=last)
            (value,) = conn.execute("PRAGMA foreign_keys").fetchone()
            self._foreign_keys = bool(value)
        return cursor

    def _check_renamed(self, conn: sqlite3.Connection, before: set[str]) -> None:
        """Undo and refuse a statement that gave something a reserved name."""
        if reserved_names(conn) - before:
            conn.execute(f"ROLLBACK TO {_RENAME_SAVEPOINT}")
            conn.execute(f"RELEASE {_RENAME_SAVEPOINT}")
            raise not_authorized()
        conn.execute(f"RELEASE {_RENAME_SAVEPOINT}")

    @property
    def database_size(self) -> int:
        """Bytes in use: (page_count - freelist_count) x page_size.

        Cloudflare's ``databaseSize``. On SQLiteBackend the KV data counts
        too (it lives in the same file); MemoryBackend keeps KV data outside
        the SQL database, so there it does not.
        """
        self._storage._owner.check_usable()
        conn = self._connection()
        (pages,) = conn.execute(
            "SELECT (SELECT * FROM pragma_page_count)"
            " - (SELECT * FROM pragma_freelist_count)"
        ).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        return int(pages) * int(page_size)

    def __repr__(self) -> str:
        return "<SqlStorage>"


def _closed_error() -> SqlError:
    return SqlError(
        "cannot read this SQL cursor any more: its database connection was "
        "closed (the backend closes idle connections beyond "
        "max_open_connections). Read a cursor to the end before awaiting "
        "something other than storage."
    )
