"""``ctx.storage.kv``: synchronous key-value access (SQL-capable objects).

The same keys and values as the async API: both go through the storage
front end's layers, so reads see every write of the object, committed or not,
and writes commit with the rest of the batch. Synchronous reads are possible
because SQL-capable backends are local and answer without suspending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from pyobjects._errors import StorageError

from ._layers import done_value, drive

if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterator

    from ._front import KVFront

__all__ = ["SyncKV"]

_INVALIDATED = (
    "kv.list() iterator was invalidated because a new call to kv.list() was "
    "started. Only one kv.list() iterator can exist at a time."
)


@final
class SyncKV:
    """``ctx.storage.kv``: ``get``, ``put``, ``delete`` and ``list``, synchronous.

    Mirrors ``SyncKvStorage`` in Workers. Only one :meth:`list` iterator may
    be in use at a time: starting another invalidates the previous one.
    """

    __slots__ = ("_generation", "_storage")

    def __init__(self, storage: KVFront) -> None:
        self._storage = storage
        self._generation = 0

    def get(self, key: str, /) -> Any:
        """Return the value stored under *key*, or ``None``."""
        if not isinstance(key, str):
            raise TypeError(f"kv.get() takes a str key, not {type(key).__name__}")
        return drive(self._storage.get(key), "kv.get()")

    def put(self, key: str, value: object, /) -> None:
        """Store *value* under *key* (committed with the object's other writes)."""
        self._storage.put(key, value)

    def delete(self, key: str, /) -> bool:
        """Delete *key*; return whether it existed."""
        if not isinstance(key, str):
            raise TypeError(f"kv.delete() takes a str key, not {type(key).__name__}")
        return done_value(self._storage.delete(key))

    def list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Iterate ``(key, value)`` pairs of a key range, in key order.

        Takes the options of :meth:`Storage.list`. The range is read when
        ``list()`` is called; a later ``kv.list()`` call invalidates this
        iterator (``StorageError`` on its next use).
        """
        self._generation += 1
        entries = drive(
            self._storage.list(
                start=start,
                start_after=start_after,
                end=end,
                prefix=prefix,
                reverse=reverse,
                limit=limit,
            ),
            "kv.list()",
        )
        return self._iterate(self._generation, list(entries.items()))

    def _iterate(
        self, generation: int, items: builtins.list[tuple[str, Any]]
    ) -> Iterator[tuple[str, Any]]:
        for item in items:
            if generation != self._generation:
                raise StorageError(_INVALIDATED)
            yield item
        if generation != self._generation:
            raise StorageError(_INVALIDATED)

    def __repr__(self) -> str:
        return "<SyncKV>"
