"""``SqlCursor``: the rows of the last statement of one ``sql.exec()`` call.

A cursor over a statement that only reads is lazy, as in workerd: SQLite
produces each row when it is asked for, so ``rows_read`` grows while the
cursor is read, a huge result is never held in memory at once, and several
cursors can be read in turn. A statement that writes runs to the end at
``exec()`` time, and its rows (``RETURNING``) are kept.

A lazy cursor still open when the object's writes commit (or its database is
wiped, or a bookmark is taken) is read to the end there and then (see
:meth:`SqlCursor._settle`): an unfinished SQLite statement would block the
WAL checkpoints that follow a commit.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING, Any, Protocol, final

from pyobjects._aliases import camel_aliases
from pyobjects._errors import SqlError

if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterator

__all__ = ["RowSource", "SqlCursor"]

# Rows a lazy cursor asks SQLite for at a time.
_BATCH = 64


class RowSource(Protocol):
    """What a lazy cursor asks for its rows (the SQL API, with its guards)."""

    def _fetch(
        self, cursor: sqlite3.Cursor, size: int
    ) -> builtins.list[tuple[Any, ...]]: ...


@final
@camel_aliases("to_array", "column_names", "rows_read", "rows_written")
class SqlCursor:
    """The result of :meth:`SqlStorage.exec`: the rows of the last statement.

    Iterate it for row dicts (a duplicated column name keeps the last value),
    or use :meth:`raw` for row lists over the same rows; :meth:`to_array`,
    :meth:`one` and :meth:`next` consume from the same position. The
    statements have already run; the rows of one that only reads are
    produced as they are read (``rows_read`` grows meanwhile).
    """

    __slots__ = (
        "__weakref__",
        "_cursor",
        "_failure",
        "_names",
        "_pos",
        "_read",
        "_rows",
        "_source",
        "_written",
    )

    def __init__(
        self,
        column_names: builtins.list[str],
        rows: builtins.list[tuple[Any, ...]],
        rows_written: int,
        *,
        cursor: sqlite3.Cursor | None = None,
        source: RowSource | None = None,
    ) -> None:
        self._names = column_names
        # Rows already read from SQLite, from _pos on not yet handed out;
        # then, while _cursor is set, the rest of the statement's rows.
        self._rows = rows
        self._pos = 0
        self._cursor = cursor
        self._source = source
        self._read = 0
        self._written = rows_written
        # What reading the rest raised when the cursor was settled.
        self._failure: Exception | None = None

    @property
    def column_names(self) -> builtins.list[str]:
        """Column names of the result, duplicates included (``columnNames``)."""
        return self._names

    @property
    def rows_read(self) -> int:
        """Rows of the last statement read so far (``rowsRead``).

        Grows as the cursor is read. SQLite's count of rows scanned is not
        visible from Python, so this counts the rows the statement returned.
        """
        return self._read

    @property
    def rows_written(self) -> int:
        """Rows the statements inserted, updated or deleted (``rowsWritten``)."""
        return self._written

    def _take(self) -> tuple[Any, ...] | None:
        pos = self._pos
        rows = self._rows
        if pos >= len(rows):
            cursor = self._cursor
            if cursor is None:
                self._raise_failure()
                return None
            assert self._source is not None
            rows = self._rows = self._source._fetch(cursor, _BATCH)
            pos = self._pos = 0
            if len(rows) < _BATCH:
                self._cursor = None  # the statement is done
            if not rows:
                return None
        self._pos = pos + 1
        self._read += 1
        return rows[pos]

    def _rest(self) -> builtins.list[tuple[Any, ...]]:
        """Take every remaining row."""
        rows = self._rows[self._pos :]
        cursor = self._cursor
        if cursor is not None:
            assert self._source is not None
            rows += self._source._fetch(cursor, 0)
            self._cursor = None
        self._rows = []
        self._pos = 0
        self._read += len(rows)
        if not rows:
            self._raise_failure()
        return rows

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _settle(self) -> None:
        """Read the statement to the end now, keeping the rows for later."""
        cursor = self._cursor
        if cursor is not None:
            assert self._source is not None
            self._rows = self._rows[self._pos :]
            self._pos = 0
            self._cursor = None
            try:
                self._rows += self._source._fetch(cursor, 0)
            except Exception as exc:  # raised when the rows before it are read
                self._failure = exc

    def _drop(self, *, reset: bool = False) -> None:
        """End the statement now and forget the rows not handed out.

        After a *reset*, reading the cursor raises the reset error.
        """
        cursor = self._cursor
        if cursor is not None:
            # The statement ends (it would lock its tables); a closed
            # connection ended it already.
            with contextlib.suppress(sqlite3.ProgrammingError):
                cursor.close()
            if not reset:
                self._cursor = None
        self._rows = []
        self._pos = 0

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
        return [dict(zip(names, row, strict=True)) for row in self._rest()]

    def one(self) -> dict[str, Any]:
        """Return the only remaining row.

        Raises:
            SqlError: If there is no row, or more than one.
        """
        rows = self._rows
        pos = self._pos
        if self._cursor is None and len(rows) == pos + 1:  # the common case
            self._pos = pos + 1
            self._read += 1
            return dict(zip(self._names, rows[pos]))  # noqa: B905  # same length
        row = self._take()
        if row is None:
            raise SqlError(
                "Expected exactly one result from SQL query, but got no results."
            )
        if self._take() is not None:
            self._drop()
            raise SqlError(
                "Expected exactly one result from SQL query, but got multiple results."
            )
        return dict(zip(self._names, row))  # noqa: B905  # same length

    def raw(self) -> Iterator[builtins.list[Any]]:
        """Iterate the remaining rows as lists, sharing this cursor's position."""
        while (row := self._take()) is not None:
            yield list(row)

    def __repr__(self) -> str:
        state = "open" if self._cursor is not None else "read"
        return f"<SqlCursor columns={self._names!r} rows_read={self._read} {state}>"
