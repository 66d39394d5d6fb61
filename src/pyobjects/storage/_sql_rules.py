"""The rules user SQL runs under, as data and pure functions (workerd's authorizer).

:class:`~pyobjects.storage._sql.SqlStorage` installs :func:`authorize` as the
SQLite authorizer while user SQL is prepared; everything it decides is here:

- transaction statements, ATTACH/DETACH, TEMP objects, virtual tables other
  than FTS5 and R*Tree are refused;
- every object whose name starts with ``_cf_`` (where key-value data and
  metadata live) is refused, by the names SQLite itself passes to the
  authorizer, never by reading the SQL text. SQLite does not pass the new
  name of ``ALTER TABLE ... RENAME TO`` (workerd patches SQLite for that), so
  :func:`may_rename` tells the caller to compare the schema's reserved names
  before and after such a statement (see :func:`reserved_names`);
- PRAGMAs and functions outside Cloudflare's allowlists are refused;
- ``sqlite3_limit`` caps columns, bound parameters, statement length, LIKE
  patterns and more (workerd's numbers, :data:`LIMITS`).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Final

from pyobjects._errors import SqlError

if TYPE_CHECKING:
    import builtins

__all__ = [
    "LIMITS",
    "TRANSACTION_ACTIONS",
    "TRANSACTION_MESSAGE",
    "allowed_name",
    "authorize",
    "is_blank",
    "may_rename",
    "not_authorized",
    "pragma_allowed",
    "reserved_names",
    "sets_foreign_keys",
    "split_statements",
    "sql_error",
    "writes",
]

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


def is_blank(piece: str) -> bool:
    """True if *piece* holds no statement: only blanks, semicolons and comments.

    *piece* is one of :func:`split_statements`'s, so its only semicolon
    outside strings, comments and trigger bodies is its last character.
    SQLite's own tokenizer decides (``sqlite3_complete``): what comes after
    a ``;`` still ends a statement only if it is nothing but blanks and
    comments. A comment left open at the end counts as a comment.
    """
    piece = piece.removesuffix(";")
    return sqlite3.complete_statement(";" + piece + "\n") or sqlite3.complete_statement(
        ";" + piece + "*/"
    )


def may_rename(piece: str) -> bool:
    """True if *piece* may rename a table (it contains the keyword RENAME).

    Only a cheap filter, never a decision: SQL keywords are ASCII and cannot
    be quoted, so a statement without these letters renames nothing; one
    with them (in a string, say) costs a schema comparison, which decides.
    """
    return "rename" in piece.lower()


_RESERVED_NAMES = "SELECT name FROM sqlite_schema WHERE length(name) >= 4"


def reserved_names(conn: sqlite3.Connection) -> builtins.set[str]:
    """The names in *conn*'s schema that start with ``_cf_`` (any case)."""
    return {name for (name,) in conn.execute(_RESERVED_NAMES) if not allowed_name(name)}


def not_authorized() -> SqlError:
    """SQLite's own refusal, ``not authorized: SQLITE_AUTH``."""
    error = SqlError("not authorized: SQLITE_AUTH")
    error.sqlite_message = "not authorized"
    error.code = error.extended_code = "SQLITE_AUTH"
    return error


def writes(action: int, arg1: str | None, arg2: str | None) -> bool:
    """True if the authorizer *action* means the statement writes.

    A PRAGMA that sets something counts: it must run in the object's
    transaction too (``defer_foreign_keys`` lasts until its COMMIT). Except
    ``foreign_keys``, which SQLite ignores inside a transaction (see
    :func:`sets_foreign_keys`).
    """
    return action in _WRITE_ACTIONS or (
        action == sqlite3.SQLITE_PRAGMA
        and arg2 is not None
        and not sets_foreign_keys(action, arg1, arg2)
    )


def sets_foreign_keys(action: int, arg1: str | None, arg2: str | None) -> bool:
    """True for the authorizer call of ``PRAGMA foreign_keys = <value>``."""
    return (
        action == sqlite3.SQLITE_PRAGMA
        and arg2 is not None
        and arg1 is not None
        and arg1.lower() == "foreign_keys"
    )


TRANSACTION_ACTIONS: Final = frozenset(
    [sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT]
)


def authorize(
    action: int, arg1: str | None, arg2: str | None, database: str | None
) -> int:
    """``SQLITE_OK`` or ``SQLITE_DENY`` for one authorizer call of user SQL."""
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
    if action in _NAMED or action == sqlite3.SQLITE_ALTER_TABLE:
        # ALTER TABLE: the table altered. A RENAME's new name is checked
        # against the schema afterwards (see may_rename()).
        return _OK if allowed_name(arg1) else _DENY
    if action in _NAMED_PAIR:
        return _OK if allowed_name(arg1) and allowed_name(arg2) else _DENY
    if action == sqlite3.SQLITE_FUNCTION:
        return _OK if arg2 in _ALLOWED_FUNCTIONS else _DENY
    if action == sqlite3.SQLITE_PRAGMA:
        return _OK if pragma_allowed(arg1, arg2) else _DENY
    if action == sqlite3.SQLITE_ANALYZE:
        return _OK
    if action in (sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE):
        if arg2 is not None and arg2.lower() in _VIRTUAL_MODULES:
            return _OK if allowed_name(arg1) else _DENY
        return _DENY
    # Transactions, ATTACH, DETACH, TEMP objects and anything unknown.
    return _DENY


def pragma_allowed(name: str | None, arg: str | None) -> bool:
    """True if ``PRAGMA name`` (``= arg`` or ``(arg)``) is on the allowlist."""
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
