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
    from collections.abc import Mapping
    from datetime import datetime

    from ._layers import _Done, _Layer

__all__ = ["KVFront", "SqlFront", "TransactionFront", "UsableCheck"]


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
    def put(self, key: str, value: object, /) -> _Done[None]: ...
    @overload
    def put(self, entries: Mapping[str, object], /) -> _Done[None]: ...

    @overload
    def delete(self, key: str, /) -> _Done[bool]: ...
    @overload
    def delete(self, keys: builtins.list[str] | tuple[str, ...], /) -> _Done[int]: ...

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
    def set_alarm(self, when: float | datetime) -> _Done[None]: ...
    def delete_alarm(self) -> _Done[None]: ...
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
