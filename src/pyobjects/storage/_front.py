"""What the storage facets need of the storage front end.

``ctx.storage.sql``, ``ctx.storage.kv`` and transactions are built by
:class:`~pyobjects.storage._api.Storage` and call back into it. They see it
through these protocols, so that none of them imports ``_api`` (which imports
them): the storage package has no import cycle, not even at the type level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, overload

if TYPE_CHECKING:
    import builtins
    import sqlite3
    from collections.abc import Awaitable, Mapping
    from datetime import datetime

    from ._layers import _Layer

__all__ = ["KVFront", "SqlFront", "StorageOwner", "TransactionFront", "UsableCheck"]


class UsableCheck(Protocol):
    """The part of the storage owner the SQL API asks before each statement."""

    def check_usable(self) -> None: ...
    def sql_time_limit(self) -> float: ...


class KVFront(Protocol):
    """The asynchronous KV operations, as the facets call them."""

    @overload
    async def get(self, key: str, /) -> Any: ...
    @overload
    async def get(
        self, keys: builtins.list[str] | tuple[str, ...], /
    ) -> dict[str, Any]: ...

    @overload
    def put(self, key: str, value: object, /) -> Awaitable[None]: ...
    @overload
    def put(self, entries: Mapping[str, object], /) -> Awaitable[None]: ...

    @overload
    def delete(self, key: str, /) -> Awaitable[bool]: ...
    @overload
    def delete(
        self, keys: builtins.list[str] | tuple[str, ...], /
    ) -> Awaitable[int]: ...

    async def list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]: ...


class TransactionFront(KVFront, Protocol):
    """What a :class:`~pyobjects.storage._transaction.Transaction` needs."""

    @property
    def _layers(self) -> builtins.list[_Layer]: ...

    async def get_alarm(self) -> int | None: ...
    def set_alarm(self, when: float | datetime) -> Awaitable[None]: ...
    def delete_alarm(self) -> Awaitable[None]: ...
    async def _begin(self) -> tuple[Any, _Layer]: ...
    def _end(self, txn: Any, layer: _Layer, commit: bool) -> None: ...


class SqlFront(Protocol):
    """What :class:`~pyobjects.storage._sql.SqlStorage` needs."""

    @property
    def _store(self) -> object: ...
    @property
    def _owner(self) -> UsableCheck: ...
    @property
    def _layers(self) -> builtins.list[_Layer]: ...

    def _sql_enter(
        self, conn: sqlite3.Connection, *, need_transaction: bool
    ) -> bool: ...
    def _sql_wrote(self) -> None: ...
    def _sql_dirty(self) -> bool: ...
    def _sql_rolled_back(self, cause: BaseException) -> None: ...


class StorageOwner:
    """What the storage needs from the object that owns it (set by the runtime)."""

    __slots__ = ()

    # Not None once the object was reset: the hot paths test it before
    # calling check_usable() (an attribute read costs less than a call).
    broken: BaseException | None

    def on_write(self) -> None:
        """A write was recorded in the pending layer: schedule a flush."""
        raise NotImplementedError

    def hold_input(self) -> None:
        """Hold back new events (a storage wait or a transaction started)."""
        raise NotImplementedError

    def release_input(self) -> None:
        """Undo one :meth:`hold_input`."""
        raise NotImplementedError

    def check_usable(self) -> None:
        """Raise the reset error if the object was reset."""
        raise NotImplementedError

    async def wait_durable(self) -> None:
        """Wait until every write recorded so far is durable."""
        raise NotImplementedError

    def check_alarm_allowed(self) -> None:
        """Raise ``TypeError`` if the object's class has no ``alarm()`` handler."""
        raise NotImplementedError

    def now_ms(self) -> int:
        """Return the runtime clock's time in epoch milliseconds."""
        raise NotImplementedError

    def reset(self, error: BaseException) -> None:
        """Reset the object with *error*: its uncommitted writes are dropped."""
        raise NotImplementedError

    def sql_time_limit(self) -> float:
        """Return the longest a call into SQLite for user SQL may run, in seconds."""
        raise NotImplementedError
