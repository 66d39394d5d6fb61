"""``ctx.storage.sql``: the SQL API of an object's private SQLite database.

The backend hands out a plain ``sqlite3.Connection`` per object (see
``SqlObjectStore`` in :mod:`pyobjects.storage._base`); every rule about what
user SQL may do lives here, once, as in workerd:

- an authorizer refuses transaction statements, ATTACH/DETACH, TEMP objects,
  virtual tables other than FTS5 and R*Tree, every object whose name starts
  with ``_cf_`` (where key-value data and metadata live), and any PRAGMA or
  function outside Cloudflare's allowlists;
- ``sqlite3_limit`` caps columns, bound parameters, statement length, LIKE
  patterns and more (workerd's numbers);
- foreign keys are ON.

The authorizer only restricts statements prepared while user SQL runs; the
backend's own statements run unrestricted. User SQL text is always executed
with a suffix (see :data:`_USER_SUFFIX`), so it can never hit a statement the
backend prepared (SQLite's statement cache is keyed by the SQL text, and a
cached statement is not authorized again).

Statements run at ``exec()`` time inside the object's implicit transaction,
which commits with the object's other writes (write coalescing and the output
gate apply to SQL as to KV). Whether a statement writes is learnt from the
authorizer when SQLite prepares it and remembered per SQL text; installing
the authorizer (once per instance) expires every prepared statement, so each
one is seen at least once. Results are read when ``exec()`` runs.
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING, Any, Final, final, overload

from pyobjects._aliases import camel_aliases
from pyobjects._errors import SqlError

from ._base import USER_OBJECTS_WHERE

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterator

    from ._front import SqlFront

__all__ = ["SqlCursor", "SqlStorage", "SqlValue", "wipe_database"]

SqlValue = int | float | str | bytes | None

# workerd's sqlite3_limit() settings (util/sqlite.c++ setupSecurity).
LIMITS: Final = {
    sqlite3.SQLITE_LIMIT_LENGTH: 4 * 1024 * 1024,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,
    sqlite3.SQLITE_LIMIT_COLUMN: 100,
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 5,
    sqlite3.SQLITE_LIMIT_VDBE_OP: 25_000,
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 127,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 50,
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 100,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 10,
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,
}

TRANSACTION_MESSAGE: Final = (
    "To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or "
    "SAVEPOINT statements. The JavaScript API is safer because it will automatically "
    "roll back on exceptions, and because it interacts correctly with Durable "
    "Objects' automatic atomic write coalescing."
)

# Appended to user SQL: a comment, so it changes nothing but the cache key.
_USER_SUFFIX: Final = "\n"

_ALLOWED_FUNCTIONS: Final = frozenset(
    # core scalar functions (sqlite_version and friends are left out on purpose)
    [
        "abs",
        "changes",
        "char",
        "coalesce",
        "concat",
        "concat_ws",
        "format",
        "glob",
        "hex",
        "ifnull",
        "iif",
        "instr",
        "last_insert_rowid",
        "length",
        "like",
        "likelihood",
        "likely",
        "load_extension",
        "lower",
        "ltrim",
        "max_scalar",
        "min_scalar",
        "nullif",
        "octet_length",
        "printf",
        "quote",
        "random",
        "randomblob",
        "replace",
        "round",
        "rtrim",
        "sign",
        "soundex",
        "substr",
        "substring",
        "total_changes",
        "trim",
        "typeof",
        "unhex",
        "unicode",
        "unlikely",
        "upper",
        "zeroblob",
        "date",
        "time",
        "datetime",
        "julianday",
        "unixepoch",
        "strftime",
        "timediff",
        "current_date",
        "current_time",
        "current_timestamp",
        "avg",
        "count",
        "group_concat",
        "max",
        "min",
        "string_agg",
        "sum",
        "total",
        "row_number",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
        "ntile",
        "lag",
        "lead",
        "first_value",
        "last_value",
        "nth_value",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "ceil",
        "ceiling",
        "cos",
        "cosh",
        "degrees",
        "exp",
        "floor",
        "ln",
        "log",
        "log10",
        "log2",
        "mod",
        "pi",
        "pow",
        "power",
        "radians",
        "sin",
        "sinh",
        "sqrt",
        "tan",
        "tanh",
        "trunc",
        "json",
        "jsonb",
        "json_array",
        "jsonb_array",
        "json_array_length",
        "json_extract",
        "jsonb_extract",
        "->",
        "->>",
        "json_insert",
        "jsonb_insert",
        "json_object",
        "jsonb_object",
        "json_patch",
        "jsonb_patch",
        "json_remove",
        "jsonb_remove",
        "json_replace",
        "jsonb_replace",
        "json_set",
        "jsonb_set",
        "json_type",
        "json_valid",
        "json_quote",
        "json_group_array",
        "jsonb_group_array",
        "json_group_object",
        "jsonb_group_object",
        "json_each",
        "json_tree",
        "match",
        "highlight",
        "bm25",
        "snippet",
        "rtreecheck",
        "sqlite_rename_column",
        "sqlite_rename_table",
        "sqlite_rename_test",
        "sqlite_drop_column",
        "sqlite_rename_quotefix",
    ]
)

_NO_ARG, _BOOLEAN, _OBJECT, _OPTIONAL_OBJECT, _NUMBER, _NUMBER_OR_OBJECT = range(6)
_ALLOWED_PRAGMAS: Final = {
    "data_version": _NO_ARG,
    "page_size": _NO_ARG,
    "case_sensitive_like": _BOOLEAN,
    "foreign_keys": _BOOLEAN,
    "defer_foreign_keys": _BOOLEAN,
    "ignore_check_constraints": _BOOLEAN,
    "legacy_alter_table": _BOOLEAN,
    "recursive_triggers": _BOOLEAN,
    "reverse_unordered_selects": _BOOLEAN,
    "foreign_key_check": _OPTIONAL_OBJECT,
    "foreign_key_list": _OBJECT,
    "index_info": _OBJECT,
    "index_list": _OBJECT,
    "index_xinfo": _OBJECT,
    "table_info": _OBJECT,
    "table_xinfo": _OBJECT,
    "quick_check": _NUMBER_OR_OBJECT,
    "optimize": _NUMBER,
}
_BOOLEANS: Final = frozenset(["true", "false", "yes", "no", "on", "off", "1", "0"])
_VIRTUAL_MODULES: Final = frozenset(["fts5", "fts5vocab", "rtree", "rtree_i32"])

_OK = sqlite3.SQLITE_OK
_DENY = sqlite3.SQLITE_DENY
_WRITE_ACTIONS: Final = frozenset(
    [
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_REINDEX,
        sqlite3.SQLITE_ANALYZE,
        sqlite3.SQLITE_CREATE_VTABLE,
        sqlite3.SQLITE_DROP_VTABLE,
    ]
)
_NAMED: Final = frozenset(  # actions whose first argument names a table/view/index
    [
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_REINDEX,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_UPDATE,
    ]
)
_NAMED_PAIR: Final = frozenset(
    [
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_DROP_TRIGGER,
    ]
)
# SQLite's primary result codes, by number (errors carry the extended code).
_PRIMARY_CODES: Final = {
    1: "SQLITE_ERROR",
    2: "SQLITE_INTERNAL",
    3: "SQLITE_PERM",
    4: "SQLITE_ABORT",
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    12: "SQLITE_NOTFOUND",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
    16: "SQLITE_EMPTY",
    17: "SQLITE_SCHEMA",
    18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT",
    20: "SQLITE_MISMATCH",
    21: "SQLITE_MISUSE",
    22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH",
    24: "SQLITE_FORMAT",
    25: "SQLITE_RANGE",
    26: "SQLITE_NOTADB",
}
_RENAME_TO_RESERVED = re.compile(r"\bRENAME\s+TO\s+[\"'`\[]?_cf_", re.IGNORECASE)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(?:\*/|$)", re.DOTALL)
_BLANK = re.compile(r"[\s;]*")
_STATEMENT_ERRORS = (sqlite3.Error, OverflowError, UnicodeEncodeError, MemoryError)
_PLAIN_TYPES: Final = frozenset([int, float, str, bytes, type(None)])
# SQL texts whose read/write classification is remembered (an unknown text
# just runs inside a transaction, which is always safe).
_MAX_CLASSIFIED = 4096


def allowed_name(name: str | None) -> bool:
    """True unless *name* is reserved (starts with ``_cf_``, any case)."""
    return name is None or name[:4].lower() != "_cf_"


def sql_error(exc: sqlite3.Error) -> SqlError:
    """Turn a ``sqlite3.Error`` into Cloudflare's ``<message>: SQLITE_<CODE>``."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = _PRIMARY_CODES.get(code & 0xFF, "SQLITE_ERROR") if code else None
    message = str(exc)
    error = SqlError(f"{message}: {name}" if name else message)
    error.sqlite_message = message
    error.code = name
    error.extended_code = getattr(exc, "sqlite_errorname", None)
    error.__cause__ = exc
    return error


def split_statements(query: str) -> builtins.list[str]:
    """Split *query* at the semicolons that end a complete statement.

    SQLite's own tokenizer (``sqlite3.complete_statement``) decides, so
    semicolons inside strings, comments and trigger bodies do not split.
    """
    parts = []
    start = 0
    pos = query.find(";")
    while pos != -1:
        if sqlite3.complete_statement(query[start : pos + 1]):
            parts.append(query[start : pos + 1])
            start = pos + 1
        pos = query.find(";", pos + 1)
    parts.append(query[start:])
    return parts


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


def _is_blank(piece: str) -> bool:
    """True if *piece* holds no statement: only blanks, semicolons and comments."""
    return _BLANK.fullmatch(_COMMENTS.sub(" ", piece)) is not None


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


@final
@camel_aliases("to_array", "column_names", "rows_read", "rows_written")
class SqlCursor:
    """The result of :meth:`SqlStorage.exec`: the rows of the last statement.

    Iterate it for row dicts (a duplicated column name keeps the last value),
    or use :meth:`raw` for row lists over the same rows; :meth:`to_array`,
    :meth:`one` and :meth:`next` consume from the same position. The
    statements have already run: results are read at ``exec()`` time, so
    ``rows_read`` and ``rows_written`` are final at once.
    """

    __slots__ = ("_names", "_pos", "_rows", "_written")

    def __init__(
        self,
        column_names: builtins.list[str],
        rows: builtins.list[tuple[Any, ...]],
        rows_written: int,
    ) -> None:
        self._rows = rows
        self._pos = 0
        self._names = column_names
        self._written = rows_written

    @property
    def column_names(self) -> builtins.list[str]:
        """Column names of the result, duplicates included (``columnNames``)."""
        return self._names

    @property
    def rows_read(self) -> int:
        """Rows the last statement returned (``rowsRead``).

        SQLite's count of rows scanned is not visible from Python.
        """
        return len(self._rows)

    @property
    def rows_written(self) -> int:
        """Rows the statements inserted, updated or deleted (``rowsWritten``)."""
        return self._written

    def _take(self) -> tuple[Any, ...] | None:
        pos = self._pos
        if pos >= len(self._rows):
            return None
        self._pos = pos + 1
        return self._rows[pos]

    def __iter__(self) -> SqlCursor:
        return self

    def __next__(self) -> dict[str, Any]:
        row = self._take()
        if row is None:
            raise StopIteration
        return dict(zip(self._names, row, strict=True))

    def next(self) -> dict[str, Any]:
        """Return ``{"done": False, "value": row}``, or ``{"done": True}`` at the end.

        Cloudflare's iterator protocol; in Python, ``next(cursor)`` or a
        ``for`` loop is the natural spelling.
        """
        row = self._take()
        if row is None:
            return {"done": True}
        return {"done": False, "value": dict(zip(self._names, row, strict=True))}

    def to_array(self) -> builtins.list[dict[str, Any]]:
        """Return the remaining rows as dicts (``toArray()``)."""
        names = self._names
        rows = self._rows[self._pos :]
        self._pos = len(self._rows)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def one(self) -> dict[str, Any]:
        """Return the only remaining row.

        Raises:
            SqlError: If there is no row, or more than one.
        """
        rows = self._rows
        pos = self._pos
        remaining = len(rows) - pos
        if remaining == 1:
            self._pos = pos + 1
            return dict(zip(self._names, rows[pos]))  # noqa: B905  # same length
        if remaining == 0:
            raise SqlError(
                "Expected exactly one result from SQL query, but got no results."
            )
        self._pos = len(rows)
        raise SqlError(
            "Expected exactly one result from SQL query, but got multiple results."
        )

    def raw(self) -> Iterator[builtins.list[Any]]:
        """Iterate the remaining rows as lists, sharing this cursor's position."""
        while (row := self._take()) is not None:
            yield list(row)

    def __repr__(self) -> str:
        return f"<SqlCursor columns={self._names!r} rows={len(self._rows)}>"


@final
@camel_aliases("database_size")
class SqlStorage:
    """``ctx.storage.sql``: run SQL against the object's private database.

    Mirrors ``SqlStorage`` in Workers. Built by the storage front end; the
    constructor is private.
    """

    __slots__ = (
        "_auth_error",
        "_conn",
        "_known",
        "_sql",
        "_storage",
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
        self._sql = ""

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
            conn.execute("PRAGMA foreign_keys = ON")
        # Installing an authorizer expires every prepared statement, so each
        # statement this instance runs is authorized (and classified) again.
        conn.set_authorizer(self._authorize)
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
        if action in _WRITE_ACTIONS or (
            action == sqlite3.SQLITE_PRAGMA and arg2 is not None
        ):
            # A PRAGMA that sets something must run in the object's
            # transaction too (defer_foreign_keys lasts until its COMMIT).
            self._wrote = True
        if action == sqlite3.SQLITE_ALTER_TABLE or action == sqlite3.SQLITE_DETACH:
            # SQLite passes the database name first for these two.
            arg1, database = arg2, arg1
        if database is not None and database != "main":
            if database == "temp" and action in (
                sqlite3.SQLITE_READ,
                sqlite3.SQLITE_UPDATE,
            ):
                return _OK if allowed_name(arg1) else _DENY
            return _DENY
        if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_RECURSIVE:
            return _OK
        if action in _NAMED:
            return _OK if allowed_name(arg1) else _DENY
        if action in _NAMED_PAIR:
            return _OK if allowed_name(arg1) and allowed_name(arg2) else _DENY
        if action == sqlite3.SQLITE_FUNCTION:
            return _OK if arg2 in _ALLOWED_FUNCTIONS else _DENY
        if action == sqlite3.SQLITE_PRAGMA:
            return _OK if self._pragma_allowed(arg1, arg2) else _DENY
        if action == sqlite3.SQLITE_ALTER_TABLE:
            if not allowed_name(arg1):
                return _DENY
            # SQLite does not tell the authorizer a RENAME's new name (workerd
            # patches SQLite for that); the statement text does.
            if _RENAME_TO_RESERVED.search(_COMMENTS.sub(" ", self._sql)):
                return _DENY
            return _OK
        if action == sqlite3.SQLITE_ANALYZE:
            return _OK
        if action == sqlite3.SQLITE_TRANSACTION or action == sqlite3.SQLITE_SAVEPOINT:
            self._auth_error = TRANSACTION_MESSAGE
            return _DENY
        if action in (sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE):
            if arg2 is not None and arg2.lower() in _VIRTUAL_MODULES:
                return _OK if allowed_name(arg1) else _DENY
            return _DENY
        # ATTACH, DETACH, TEMP objects and anything unknown.
        return _DENY

    @staticmethod
    def _pragma_allowed(name: str | None, arg: str | None) -> bool:
        if name is None:  # pragma: no cover - SQLite always names the pragma
            return False
        name = name.lower()
        if name == "table_list":
            return True
        kind = _ALLOWED_PRAGMAS.get(name)
        if kind is None:
            return False
        if kind == _NO_ARG:
            return arg is None
        if arg is None:
            return kind != _OBJECT
        if kind == _BOOLEAN:
            value = arg
            if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
                value = value[1:-1]
            return value.lower() in _BOOLEANS
        if kind in (_OBJECT, _OPTIONAL_OBJECT):
            return allowed_name(arg)
        if arg.lstrip("-").isdigit():
            return True
        return kind == _NUMBER_OR_OBJECT and allowed_name(arg)

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
                text, writes = known
                if writes:
                    if not in_transaction:
                        conn.execute("BEGIN")
                    if not storage._layers[0].sql_dirty:
                        storage._sql_wrote()
                changes = conn.total_changes
                self._untrusted = True
                self._auth_error = None
                try:
                    cursor = conn.execute(text, bindings)
                    description = cursor.description
                    rows = [] if description is None else cursor.fetchall()
                except _STATEMENT_ERRORS as exc:
                    raise self._error(exc, last=True) from exc
                finally:
                    self._untrusted = False
                return SqlCursor(
                    [] if description is None else [d[0] for d in description],
                    rows,
                    conn.total_changes - changes,
                )
        conn = self._connection()
        pieces = split_statements(query) if ";" in query else [query]
        if len(pieces) > 1 and not pieces[-1].strip():
            pieces.pop()  # blanks after the last semicolon
        # As in workerd, the statements run in order until one piece holds
        # none (a comment, a stray semicolon), which fails the call.
        changes = conn.total_changes
        for piece in pieces[:-1]:
            if _is_blank(piece):
                raise SqlError("SQL code did not contain a statement.")
            self._run(conn, piece, (), last=False)
        if _is_blank(pieces[-1]):
            raise SqlError("SQL code did not contain a statement.")
        cursor = self._run(conn, pieces[-1], bindings)
        names = [] if cursor.description is None else [d[0] for d in cursor.description]
        try:
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise sql_error(exc) from exc
        if len(pieces) == 1:
            text = pieces[0] + _USER_SUFFIX
            classified = self._writes.get(text)
            if classified is not None:
                if len(self._known) >= _MAX_CLASSIFIED:
                    self._known.clear()
                self._known[query] = (text, classified)
        return SqlCursor(names, rows, conn.total_changes - changes)

    def _error(self, exc: BaseException, *, last: bool) -> BaseException:
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
    ) -> sqlite3.Cursor:
        """Run one statement of user SQL under the authorizer."""
        storage = self._storage
        text = piece + _USER_SUFFIX
        writes = self._writes.get(text)
        began = storage._sql_enter(conn, need_transaction=writes is not False)
        self._untrusted = True
        self._wrote = False
        self._auth_error = None
        self._sql = piece
        prepared = False
        try:
            cursor = conn.execute(text, bindings)
            prepared = True
        except _STATEMENT_ERRORS as exc:
            raise self._error(exc, last=last) from exc
        finally:
            self._untrusted = False
            if writes is None:
                writes = self._wrote
                if prepared:
                    # Only a statement that compiled is classified for good
                    # ("no such table" may stop SQLite before the INSERT).
                    if len(self._writes) >= _MAX_CLASSIFIED:
                        self._writes.clear()  # SQL built by string formatting
                    self._writes[text] = writes
            if writes:
                storage._sql_wrote()
            elif began and not storage._sql_dirty():
                # A read needed no transaction after all: end it at once.
                conn.execute("ROLLBACK")
        return cursor

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
