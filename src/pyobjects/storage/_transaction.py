"""Transactions of the storage front end (``storage.transaction()``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, final, overload

from pyobjects._aliases import camel_aliases
from pyobjects._errors import TransactionError

from ._layers import _MISS, _Layer, in_transaction

if TYPE_CHECKING:
    import builtins
    import contextvars
    from collections.abc import Awaitable, Generator, Mapping
    from datetime import datetime
    from types import TracebackType

    from ._front import TransactionFront

__all__ = ["Transaction", "_TransactionContext"]


@final
@camel_aliases("delete_all", "get_alarm", "set_alarm", "delete_alarm")
class Transaction:
    """The ``txn`` handed to a transaction closure (constructor is private).

    Supports ``get``, ``put``, ``delete``, ``list`` and ``rollback()``. After
    ``rollback()`` every operation raises; after the closure returns, using
    ``txn`` raises too.
    """

    __slots__ = ("_layer", "_state", "_storage")

    def __init__(self, storage: TransactionFront, layer: _Layer) -> None:
        self._storage = storage
        self._layer = layer
        self._state = "open"

    def _check(self, op: str) -> TransactionFront:
        if self._state == "committed":
            raise TransactionError(
                f"Cannot call {op}() on transaction that has already committed: "
                "did you move `txn` outside of the closure?"
            )
        if self._state == "rolled back":
            raise TransactionError(f"Cannot {op}() on rolled back transaction")
        return self._storage

    @overload
    async def get(self, key: str, /) -> Any: ...
    @overload
    async def get(
        self, keys: builtins.list[str] | tuple[str, ...], /
    ) -> dict[str, Any]: ...

    async def get(self, key: str | builtins.list[str] | tuple[str, ...], /) -> Any:
        """Like :meth:`Storage.get`, inside the transaction."""
        return await self._check("get").get(key)

    @overload
    def put(self, key: str, value: object, /) -> Awaitable[None]: ...
    @overload
    def put(self, entries: Mapping[str, object], /) -> Awaitable[None]: ...

    def put(
        self, key: str | Mapping[str, object], value: object = _MISS, /
    ) -> Awaitable[None]:
        """Like :meth:`Storage.put`, inside the transaction."""
        return self._check("put").put(key, value)  # type: ignore[arg-type]

    @overload
    def delete(self, key: str, /) -> Awaitable[bool]: ...
    @overload
    def delete(
        self, keys: builtins.list[str] | tuple[str, ...], /
    ) -> Awaitable[int]: ...

    def delete(
        self, key: str | builtins.list[str] | tuple[str, ...], /
    ) -> Awaitable[bool] | Awaitable[int]:
        """Like :meth:`Storage.delete`, inside the transaction."""
        return self._check("delete").delete(key)

    async def list(self, **options: Any) -> dict[str, Any]:
        """Like :meth:`Storage.list`, inside the transaction."""
        return await self._check("list").list(**options)

    async def get_alarm(self) -> int | None:
        """Like :meth:`Storage.get_alarm`, inside the transaction."""
        return await self._check("get_alarm").get_alarm()

    def set_alarm(self, when: float | datetime) -> Awaitable[None]:
        """Like :meth:`Storage.set_alarm`; rolled back with the transaction."""
        return self._check("set_alarm").set_alarm(when)

    def delete_alarm(self) -> Awaitable[None]:
        """Like :meth:`Storage.delete_alarm`; rolled back with the transaction."""
        return self._check("delete_alarm").delete_alarm()

    def delete_all(self) -> Awaitable[None]:
        """Always refused: ``delete_all()`` cannot run inside a transaction."""
        self._check("delete_all")
        raise TransactionError("Cannot call delete_all() within a transaction")

    def rollback(self) -> None:
        """Discard the transaction's writes when the closure ends.

        May be called more than once. The closure's result is still returned.
        """
        if self._state == "committed":
            self._check("rollback")
        storage = self._storage
        if storage._layers[-1] is not self._layer:
            raise TransactionError(
                "Cannot roll back an outer transaction while a nested transaction "
                "is still running."
            )
        self._state = "rolled back"
        self._layer.writes.clear()
        self._layer.alarm_changed = False


@final
class _TransactionContext:
    """``async with storage.transaction() as txn``."""

    __slots__ = ("_layer", "_storage", "_token", "_txn")

    def __init__(self, storage: TransactionFront) -> None:
        self._storage = storage
        self._txn: Transaction | None = None
        self._layer: _Layer | None = None
        self._token: contextvars.Token[frozenset[object]] | None = None

    async def __aenter__(self) -> Transaction:
        if self._txn is not None:
            raise TransactionError("this transaction context was already entered")
        storage = self._storage
        self._txn, self._layer = await storage._begin()
        self._token = in_transaction.set(in_transaction.get() | {storage})
        return self._txn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._txn is not None
        assert self._layer is not None
        commit = exc_type is None and self._txn._state == "open"
        if self._token is not None:
            in_transaction.reset(self._token)
        self._storage._end(self._txn, self._layer, commit)

    def __await__(self) -> Generator[Any, None, Self]:
        raise TypeError(
            "storage.transaction() without a closure must be used as "
            "`async with storage.transaction() as txn:`"
        )
        yield  # type: ignore[unreachable]
