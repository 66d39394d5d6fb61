"""Building blocks shared by the storage front end and its transactions."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pyobjects._errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine, Generator

__all__ = [
    "_DONE_NONE",
    "_MISS",
    "_Done",
    "_Layer",
    "done_value",
    "drive",
    "in_transaction",
]

T = TypeVar("T")

_MISS: Any = object()  # "not known here, ask the next level"

# The storages (front ends) whose transaction the current task is inside.
in_transaction: contextvars.ContextVar[frozenset[object]] = contextvars.ContextVar(
    "pyobjects_in_transaction", default=frozenset()
)


class _Done(Generic[T]):
    """An awaitable that is already finished (the result of a recorded write)."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self._value
        yield  # type: ignore[unreachable]  # makes this a generator; never runs


_DONE_NONE: _Done[None] = _Done(None)


def done_value(result: Awaitable[T]) -> T:
    """The value of a recorded write's result (public signatures say Awaitable)."""
    assert isinstance(result, _Done)
    return result._value  # type: ignore[no-any-return]


class _Layer:
    """Writes not yet committed: a pending batch or an open transaction."""

    __slots__ = (
        "alarm",
        "alarm_changed",
        "delete_all",
        "savepoint",
        "sql_dirty",
        "sync",
        "writes",
    )

    def __init__(self) -> None:
        self.writes: dict[str, bytes | None] = {}
        self.delete_all: bool = False
        self.alarm_changed: bool = False
        self.alarm: int | None = None
        # SQL: changes made in the object's open SQLite transaction, the
        # savepoint a transaction layer opened (lazily, at its first SQL
        # statement), and whether it is a transaction_sync() layer.
        self.sql_dirty: bool = False
        self.savepoint: str | None = None
        self.sync: bool = False

    def __bool__(self) -> bool:
        return (
            bool(self.writes) or self.delete_all or self.alarm_changed or self.sql_dirty
        )


def drive(coro: Coroutine[Any, Any, T], what: str = "delete()") -> T:
    """Run a backend coroutine that must finish without suspending."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    # TODO(#2): backends whose reads suspend (a database server) need delete()
    # to learn existence under the input gate instead of synchronously.
    raise StorageError(
        f"this storage backend suspended during {what}; backends used with "
        f"{what} must answer reads without suspending"
    )
