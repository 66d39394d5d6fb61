"""The storage front end: ``ctx.storage`` of one Durable Object instance.

All storage policy lives here, once, for every backend: key and value limits,
the codec, read-your-writes, write coalescing, transactions and the read
cache. A backend only stores bytes (:mod:`pyobjects.storage._base`).

Writes are recorded when called. ``put``/``delete``/``delete_all`` are plain
functions that validate, encode and record the write in the *pending layer*,
then return an already-finished awaitable (not a coroutine, so leaving it
un-awaited is silent). The first write of a batch asks the owner to flush; the
flusher cannot run before the writing task yields to the event loop, so every
write made until then lands in one atomic backend commit.

Reads look through the layers top-down: open transactions, the pending layer,
batches being committed, then the clean cache, then the backend.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast, final, overload

import anyio

from pyobjects._aliases import camel_aliases
from pyobjects._errors import StorageError, StorageLimitError, TransactionError
from pyobjects._serialization import MAX_VALUE_BYTES, decode, encode

from ._api_sql import SqlFacets
from ._base import ListQuery, WriteBatch
from ._front import StorageOwner
from ._layers import _DONE_NONE, _MISS, _Done, _Layer, drive, in_transaction
from ._limits import (
    CACHE_BYTES,
    MAX_KEY_BYTES,
    alarm_ms,
    check_batch_size,
    check_key,
    encode_value,
    not_a_key,
    prefix_end,
)
from ._sync_kv import SyncKV
from ._transaction import Transaction, _TransactionContext

if TYPE_CHECKING:
    import builtins
    from datetime import datetime

    from ._base import ObjectStore
    from ._sql import SqlStorage

__all__ = ["Storage", "StorageOwner"]

_new_tuple = tuple.__new__

T = TypeVar("T")

_NO_SYNC_KV = (
    "The storage.kv (synchronous KV) API is only available for SQLite-backed "
    "Durable Objects: this object's storage backend ({}) does not provide SQL "
    "databases."
)


@final
@camel_aliases(
    "delete_all",
    "get_alarm",
    "set_alarm",
    "delete_alarm",
    "get_current_bookmark",
    "get_bookmark_for_time",
    "on_next_session_restore_bookmark",
)
class Storage(SqlFacets):
    """``ctx.storage``: transactional, strongly consistent key-value storage.

    Mirrors ``DurableObjectStorage`` in Workers. Keys are ``str`` (at most
    2,048 UTF-8 bytes) ordered by code point; values are anything the codec
    supports (at most 131,072 encoded bytes). The constructor is private: the
    runtime builds one per object instance.
    """

    __slots__ = (
        "_alarm",
        "_alarm_writes",
        "_cache",
        "_cache_bytes",
        "_inflight",
        "_kv",
        "_layers",
        "_owner",
        "_pending_name",
        "_store",
        "_txn_done",
    )

    def __init__(
        self, store: ObjectStore, owner: StorageOwner, *, name: str | None = None
    ) -> None:
        self._store = store
        self._owner = owner
        self._layers: list[_Layer] = [_Layer()]
        # Batches being committed: a list from the first commit that suspends
        # (an empty tuple until then is one object less per instance for the
        # cyclic garbage collector to scan).
        self._inflight: list[_Layer] | tuple[()] = ()
        # The clean cache, made at the first value remembered (one object less
        # per instance until then, for the cyclic garbage collector).
        self._cache: OrderedDict[str, bytes | None] | None = None
        self._cache_bytes = 0
        self._pending_name = name
        self._txn_done: anyio.Event | None = None
        # The committed alarm as this instance knows it (_MISS: ask the
        # backend), and a count of alarm writes (the alarm runner uses it).
        self._alarm: int | None = _MISS
        self._alarm_writes = 0
        self._sql: SqlStorage | None = None
        self._kv: SyncKV | None = None

    # -- reading -----------------------------------------------------------

    def _visible_layers(self) -> builtins.list[_Layer]:
        """The uncommitted layers this task sees.

        An open transaction is visible only inside it (its task, and tasks
        started from it); another event that resumes meanwhile sees and
        writes the pending layer below it.
        """
        layers = self._layers
        if len(layers) > 1 and self not in in_transaction.get():
            return layers[:1]
        return layers

    def _uncommitted(self) -> builtins.list[_Layer]:
        """Every uncommitted layer this task sees, oldest first.

        Batches being committed, then the pending layer, then open
        transactions (see :meth:`_visible_layers`).
        """
        layers = self._layers
        if len(layers) > 1:
            layers = self._visible_layers()
        if self._inflight:
            layers = [*self._inflight, *layers]
        return layers

    def _lookup(self, key: str) -> bytes | None:
        """Return the value known in memory, None if absent, or _MISS."""
        layers = self._layers
        if len(layers) == 1 and not self._inflight:  # the common case
            layer = layers[0]
            value = layer.writes.get(key, _MISS)
            if value is not _MISS:
                return value  # type: ignore[no-any-return]
            if layer.delete_all:
                return None
        else:
            for layer in reversed(self._uncommitted()):  # newest first
                value = layer.writes.get(key, _MISS)
                if value is not _MISS:
                    return value  # type: ignore[no-any-return]
                if layer.delete_all:
                    return None
        cache = self._cache
        if cache is None:
            return _MISS  # type: ignore[no-any-return]
        value = cache.get(key, _MISS)
        if value is not _MISS:
            cache.move_to_end(key)
        return value  # type: ignore[no-any-return]

    def _remember(self, key: str, value: bytes | None) -> None:
        cache = self._cache
        if cache is None:
            cache = self._cache = OrderedDict()
        old = cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= len(old)
        cache[key] = value
        if value is not None:
            self._cache_bytes += len(value)
            while self._cache_bytes > CACHE_BYTES and cache:
                _, dropped = cache.popitem(last=False)
                if dropped is not None:
                    self._cache_bytes -= len(dropped)

    async def _fetch(self, keys: builtins.list[str]) -> dict[str, bytes]:
        """Read keys from the backend, holding the input gate, and cache them."""
        owner = self._owner
        owner.hold_input()
        try:
            found = await self._store.get(keys)
        finally:
            owner.release_input()
        owner.check_usable()
        for key in keys:
            # A write recorded while a (suspending) read was in flight wins.
            if self._lookup(key) is _MISS:
                self._remember(key, found.get(key))
        return found

    @overload
    async def get(self, key: str, /) -> Any: ...
    @overload
    async def get(
        self, keys: builtins.list[str] | tuple[str, ...], /
    ) -> dict[str, Any]: ...

    async def get(self, key: str | builtins.list[str] | tuple[str, ...], /) -> Any:
        """Return the value stored under *key*, or ``None``.

        With a list of keys, return a dict of the keys that exist, in key
        order (at most 128 keys). Every call returns a fresh copy. Reads see
        this object's own writes, committed or not.
        """
        owner = self._owner
        if owner.broken is not None:
            owner.check_usable()
        if type(key) is str:
            if len(key) > MAX_KEY_BYTES or not key.isascii():
                check_key(key)  # ASCII keys this short are valid
            data = self._lookup(key)
            if data is _MISS:
                data = (await self._fetch([key])).get(key)
            return None if data is None else decode(data)
        if not isinstance(key, (list, tuple)):
            raise not_a_key("get", key)
        check_batch_size(len(key))
        keys = [check_key(k) for k in key]
        found: dict[str, bytes | None] = {}
        missing: builtins.list[str] = []
        for k in keys:
            data = self._lookup(k)
            if data is _MISS:
                missing.append(k)
            else:
                found[k] = data
        if missing:
            fetched = await self._fetch(missing)
            for k in missing:
                data = self._lookup(k)
                found[k] = fetched.get(k) if data is _MISS else data
        return {k: decode(found[k]) for k in sorted(found) if found[k] is not None}  # type: ignore[arg-type]

    def _overlay(
        self, lo: str | None, hi: str | None
    ) -> tuple[bool, dict[str, bytes | None]]:
        """Uncommitted writes in [lo, hi), and whether a delete_all hides the rest."""
        hidden = False
        merged: dict[str, bytes | None] = {}
        for layer in self._uncommitted():
            if layer.delete_all:
                hidden = True
                merged.clear()
            merged.update(
                (k, v)
                for k, v in layer.writes.items()
                if (lo is None or k >= lo) and (hi is None or k < hi)
            )
        return hidden, merged

    async def list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Return the stored entries of a key range, in key order.

        ``start`` is inclusive, ``start_after`` exclusive (not both), ``end``
        exclusive; ``prefix`` narrows the range; ``reverse`` lists from the
        largest key and ``limit`` then takes the largest keys.
        """
        self._owner.check_usable()
        if start is not None and start_after is not None:
            raise TypeError(
                "list() cannot be called with both start and start_after values."
            )
        if limit is not None:
            if not isinstance(cast("object", limit), int) or isinstance(limit, bool):
                raise TypeError(
                    f"list() limit must be an int, not {type(limit).__name__}"
                )
            if limit <= 0:
                raise ValueError(f"List limit must be positive (got {limit}).")
        lo = None if start is None else check_key(start, "start")
        if start_after is not None:
            lo = check_key(start_after, "start_after") + "\x00"
        hi = None if end is None else check_key(end, "end")
        if prefix is not None:
            check_key(prefix, "prefix")
            if lo is None or lo < prefix:
                lo = prefix
            prefix_hi = prefix_end(prefix)
            if prefix_hi is not None and (hi is None or hi > prefix_hi):
                hi = prefix_hi
        if lo is not None and hi is not None and hi <= lo:
            return {}
        hidden, overlay = self._overlay(lo, hi)
        rows: builtins.list[tuple[str, bytes]]
        if hidden:
            rows = []
        else:
            query = ListQuery(
                start=lo,
                end=hi,
                reverse=reverse,
                limit=None if limit is None else limit + len(overlay),
            )
            owner = self._owner
            owner.hold_input()
            try:
                rows = await self._store.list(query)
            finally:
                owner.release_input()
            owner.check_usable()
        if overlay:
            merged = dict(rows)
            for k, v in overlay.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            rows = sorted(merged.items(), reverse=reverse)
        if limit is not None:
            rows = rows[:limit]
        return {k: decode(v) for k, v in rows}

    # -- writing -----------------------------------------------------------

    def _record(self) -> _Layer:
        """Return the layer to write into, scheduling a flush if it is pending."""
        layers = self._layers
        if len(layers) > 1:
            layers = self._visible_layers()
            if len(layers) > 1:
                return layers[-1]  # inside a transaction: it commits later
        self._owner.on_write()
        return layers[0]

    @overload
    def put(self, key: str, value: object, /) -> Awaitable[None]: ...
    @overload
    def put(self, entries: Mapping[str, object], /) -> Awaitable[None]: ...

    def put(
        self, key: str | Mapping[str, object], value: object = _MISS, /
    ) -> Awaitable[None]:
        """Store *value* under *key*, or every pair of a dict (at most 128).

        The write is recorded now; the returned awaitable is already done and
        may be left un-awaited. Writes made before the next yield to the event
        loop commit together, all or nothing. Mirrors ``storage.put()``.

        Raises:
            StorageLimitError: A key, value or the batch is over a limit
                (nothing of the call is written).
            SerializationError: A value the codec cannot store.
        """
        owner = self._owner
        if owner.broken is not None:
            owner.check_usable()
        if type(key) is not str and isinstance(key, Mapping):
            if value is not _MISS:
                raise TypeError(
                    "put() takes either (key, value) or a single dict of entries"
                )
            check_batch_size(len(key))
            encoded = [(check_key(k), encode_value(v)) for k, v in key.items()]
            writes = self._record().writes
            for k, data in encoded:
                writes[k] = data
            return _DONE_NONE
        if value is _MISS:
            raise TypeError("put() missing the value to store")
        if type(key) is not str or len(key) > MAX_KEY_BYTES or not key.isascii():
            check_key(key)  # ASCII keys this short are valid
        data = encode(value)  # encode_value(), inlined
        if len(data) > MAX_VALUE_BYTES:
            raise StorageLimitError("value", limit=MAX_VALUE_BYTES, size=len(data))
        layers = self._layers
        if len(layers) == 1:  # no transaction open: _record(), inlined
            owner.on_write()
            layers[0].writes[key] = data
        else:
            self._record().writes[key] = data
        return _DONE_NONE

    @overload
    def delete(self, key: str, /) -> Awaitable[bool]: ...
    @overload
    def delete(
        self, keys: builtins.list[str] | tuple[str, ...], /
    ) -> Awaitable[int]: ...

    def delete(
        self, key: str | builtins.list[str] | tuple[str, ...], /
    ) -> Awaitable[bool] | Awaitable[int]:
        """Delete *key* (awaitable -> existed?) or a list of keys (-> count).

        Recorded at call time like :meth:`put`. Mirrors ``storage.delete()``.
        """
        self._owner.check_usable()
        if type(key) is str or isinstance(key, str):
            keys = [check_key(key)]
            single = True
        elif isinstance(key, (list, tuple)):
            check_batch_size(len(key))
            keys = [check_key(k) for k in key]
            single = False
        else:
            raise not_a_key("delete", key)
        existed = self._exist(keys)
        writes = self._record().writes
        for k in keys:
            writes[k] = None
        if single:
            return _Done(bool(existed))
        return _Done(existed)

    def _exist(self, keys: builtins.list[str]) -> int:
        unknown: builtins.list[str] = []
        count = 0
        for k in dict.fromkeys(keys):
            data = self._lookup(k)
            if data is _MISS:
                unknown.append(k)
            elif data is not None:
                count += 1
        if unknown:
            found = drive(self._store.get(unknown))
            for k in unknown:
                self._remember(k, found.get(k))
            count += len(found)
        return count

    def delete_all(self) -> Awaitable[None]:
        """Delete every key of the object, atomically.

        Writes not yet committed are dropped (they would be wiped anyway), and
        the alarm is deleted too, as with Cloudflare's
        ``delete_all_deletes_alarm`` default. Refused inside a transaction.
        """
        self._owner.check_usable()
        if len(self._visible_layers()) > 1:
            raise TransactionError("Cannot call delete_all() within a transaction")
        wiped = self._wipe_sql()
        layer = self._record()
        layer.writes.clear()
        layer.sql_dirty = layer.sql_dirty or wiped
        layer.delete_all = True
        layer.alarm_changed = True
        layer.alarm = None
        self._alarm_writes += 1
        return _DONE_NONE

    # -- alarms --------------------------------------------------------------

    async def get_alarm(self) -> int | None:
        """Return the alarm time in epoch milliseconds, or ``None``.

        Inside ``alarm()`` it is ``None`` unless the handler set a new alarm.
        Mirrors ``storage.getAlarm()``.
        """
        self._owner.check_usable()
        known = self._known_alarm()
        if known is not _MISS:
            return known
        if self._alarm is _MISS:
            owner = self._owner
            owner.hold_input()
            try:
                alarm = await self._store.get_alarm()
            finally:
                owner.release_input()
            owner.check_usable()
            if self._alarm is _MISS:
                self._alarm = alarm
        return self._alarm

    def _known_alarm(self) -> int | None:
        """The alarm as known without a backend read (_MISS if unknown)."""
        for layer in reversed(self._uncommitted()):
            if layer.alarm_changed:
                return layer.alarm
        return self._alarm

    def set_alarm(self, when: float | datetime) -> Awaitable[None]:
        """Set the object's one alarm to *when* (epoch ms or an aware datetime).

        Replaces any earlier alarm; a time in the past is moved to now, so the
        alarm runs at once. Recorded at call time and committed with the
        other writes, like :meth:`put`. Mirrors ``storage.setAlarm()``.

        Raises:
            TypeError: *when* is not a time, is not finite, is ``<= 0``, is
                past ``8.64e15`` ms (the largest JavaScript Date) or is a naive
                datetime, or the class has no ``alarm()`` handler. Nothing is
                recorded then: the other writes of the batch are unaffected.
        """
        self._owner.check_usable()
        ms = alarm_ms(when)
        self._owner.check_alarm_allowed()
        ms = max(ms, self._owner.now_ms())
        if self._known_alarm() == ms:
            return _DONE_NONE  # already set to that time: no write (Cloudflare)
        layer = self._record()
        layer.alarm_changed = True
        layer.alarm = ms
        self._alarm_writes += 1
        return _DONE_NONE

    def delete_alarm(self) -> Awaitable[None]:
        """Delete the alarm, if any. Mirrors ``storage.deleteAlarm()``.

        A handler that is already running is not cancelled.
        """
        self._owner.check_usable()
        layer = self._record()
        layer.alarm_changed = True
        layer.alarm = None
        self._alarm_writes += 1
        return _DONE_NONE

    async def sync(self) -> None:
        """Wait until every write made before this call is durable."""
        self._owner.check_usable()
        await self._owner.wait_durable()

    # -- transactions ------------------------------------------------------

    @overload
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]: ...
    @overload
    def transaction(
        self, closure: Callable[[Transaction], Awaitable[T]], /
    ) -> Coroutine[Any, Any, T]: ...

    def transaction(  # mypy rejects a positional-only default here
        self, closure: Callable[[Transaction], Awaitable[Any]] | None = None
    ) -> contextlib.AbstractAsyncContextManager[Transaction] | Coroutine[Any, Any, Any]:
        """Run *closure(txn)* as one serializable transaction, or open one.

        ``await storage.transaction(fn)`` returns ``fn``'s result; the writes
        commit together when it returns, and roll back (the exception
        propagates, the object is not reset) when it raises. Also usable as
        ``async with storage.transaction() as txn:``. Nothing else runs in the
        object meanwhile, and ``ctx.storage`` calls inside join the
        transaction (Cloudflare's SQLite-backed model).
        """
        self._owner.check_usable()
        if closure is None:
            return _TransactionContext(self)
        return self._run_transaction(closure)

    async def _run_transaction(
        self, closure: Callable[[Transaction], Awaitable[T]]
    ) -> T:
        async with _TransactionContext(self) as txn:
            return await closure(txn)

    async def _begin(self) -> tuple[Transaction, _Layer]:
        # Transactions are serializable: a transaction of another task (an
        # event that was already running when this one began) waits until
        # the open one ends. Nested transactions, and tasks started inside
        # one, share it (they see it through the context variable).
        while len(self._layers) > 1 and self not in in_transaction.get():
            if self._txn_done is None:
                self._txn_done = anyio.Event()
            await self._txn_done.wait()
            self._owner.check_usable()
        self._owner.hold_input()
        layer = _Layer()
        self._layers.append(layer)
        return Transaction(self, layer), layer

    def _end(self, txn: Transaction, layer: _Layer, commit: bool) -> None:
        txn._state = "committed"
        self._owner.release_input()
        self._close_layer(layer, commit)

    def _close_layer(self, layer: _Layer, commit: bool) -> None:
        """End a transaction layer: merge it into the one below, or drop it."""
        layers = self._layers
        if layer not in layers:
            return  # the object was reset: _discard() dropped every layer
        if layers[-1] is not layer:  # pragma: no cover  # defended by rollback()
            raise TransactionError("transactions ended out of order")
        layers.pop()
        savepoint = layer.savepoint
        if savepoint is not None:
            conn = self._sql._conn if self._sql is not None else None
            if conn is not None and conn.in_transaction:
                try:
                    if not commit:
                        conn.execute(f"ROLLBACK TO {savepoint}")
                    conn.execute(f"RELEASE {savepoint}")
                except sqlite3.Error as exc:  # pragma: no cover - defensive
                    raise StorageError(
                        f"cannot end SQL savepoint {savepoint}: {exc}"
                    ) from exc
            # The object's SQL transaction stays open either way: commit it
            # with the next batch.
            layer.sql_dirty = True
        if (commit and layer) or layer.sql_dirty:
            below = layers[-1]
            if len(layers) == 1:
                self._owner.on_write()
            if commit:
                below.writes.update(layer.writes)
                if layer.alarm_changed:
                    below.alarm_changed = True
                    below.alarm = layer.alarm
            if layer.sql_dirty:
                below.sql_dirty = True
        if len(layers) == 1 and self._txn_done is not None:
            self._txn_done.set()
            self._txn_done = None

    # -- SQL (the rest is in _api_sql.SqlFacets) ---------------------------

    @property
    def kv(self) -> SyncKV:
        """Synchronous key-value access to the same data (``ctx.storage.kv``).

        Raises:
            StorageError: The storage backend provides no SQL databases.
        """
        if self._kv is None:
            if not self._has_sql:
                raise StorageError(_NO_SYNC_KV.format(type(self._store).__name__))
            self._kv = SyncKV(self)
        return self._kv

    # -- point-in-time recovery ------------------------------------------------

    def _pitr(self, op: str) -> Any:
        method = getattr(self._store, op, None)
        if method is None:
            raise StorageError(
                "This Durable Object's storage back-end does not implement "
                "point-in-time recovery."
            )
        if self._sql is not None:
            self._sql._settle()  # the history's checkpoint needs no reader
        return method

    async def get_current_bookmark(self) -> str:
        """Return a bookmark for the current state (``getCurrentBookmark``).

        Writes not yet committed are committed first, so the bookmark covers
        everything this object did so far.

        Raises:
            StorageError: The backend does not keep history.
        """
        self._owner.check_usable()
        method = self._pitr("current_bookmark")
        await self._owner.wait_durable()
        return await method()  # type: ignore[no-any-return]

    async def get_bookmark_for_time(self, when: float | datetime) -> str:
        """Return a bookmark for the state at *when* (``getBookmarkForTime``).

        *when* is epoch milliseconds or an aware datetime within the backend's
        retention window (30 days by default); a time in the future means now.

        Raises:
            StorageError: The backend does not keep history.
            ValueError: *when* is older than the retention window.
        """
        self._owner.check_usable()
        ms = alarm_ms(when, "get_bookmark_for_time()")
        method = self._pitr("bookmark_for_time")
        await self._owner.wait_durable()
        return await method(ms, self._owner.now_ms())  # type: ignore[no-any-return]

    async def on_next_session_restore_bookmark(self, bookmark: str) -> str:
        """Restore the object to *bookmark* the next time it starts.

        Returns a bookmark for the state just before that restore, which
        undoes it (``onNextSessionRestoreBookmark``). The restore covers KV and
        SQL data and the alarm; call ``ctx.abort()`` to restart now.

        Raises:
            StorageError: The backend does not keep history.
            ValueError: *bookmark* is malformed, not this object's, or outside
                the retention window.
        """
        self._owner.check_usable()
        if not isinstance(cast("object", bookmark), str):
            raise TypeError(f"bookmark must be a str, not {type(bookmark).__name__}")
        method = self._pitr("schedule_restore")
        await self._owner.wait_durable()
        return await method(bookmark, self._owner.now_ms())  # type: ignore[no-any-return]

    # -- used by the runtime -----------------------------------------------

    def _take_batch(self) -> tuple[WriteBatch, _Layer] | None:
        """Move the pending layer to in-flight and return it as a batch."""
        pending = self._layers[0]
        if not pending:
            return None
        if self._sql is not None and self._sql._open:
            # An unfinished statement would block the checkpoints after it.
            self._sql._settle()
        self._layers[0] = _Layer()
        inflight = self._inflight
        if isinstance(inflight, list):
            inflight.append(pending)
        else:
            self._inflight = [pending]
        batch = WriteBatch(
            pending.delete_all,
            pending.writes,
            pending.alarm_changed,
            pending.alarm,
            self._pending_name,
        )
        return batch, pending

    def _commit_pending(
        self, commit: Callable[[Any, WriteBatch], None], store: object
    ) -> WriteBatch | None:
        """Commit the pending layer with *commit* (a plain function), inline.

        :meth:`_take_batch`, the commit and :meth:`_batch_done` in one: the
        commit cannot suspend, so nothing reads the layers meanwhile and the
        pending layer is emptied in place instead of moving to in-flight.
        Returns the batch, or None if there was nothing to commit. If the
        commit raises, the layer is left as it was (the object resets).
        """
        pending = self._layers[0]
        writes = pending.writes
        delete_all = pending.delete_all
        alarm_changed = pending.alarm_changed
        if (
            not writes
            and not delete_all
            and not alarm_changed
            and not pending.sql_dirty
        ):
            return None
        sql = self._sql
        if sql is not None and sql._open:
            sql._settle()  # an unfinished statement would block the checkpoints
        # WriteBatch(...) without the namedtuple's Python-level __new__
        batch: WriteBatch = _new_tuple(
            WriteBatch,
            (delete_all, writes, alarm_changed, pending.alarm, self._pending_name),
        )
        commit(store, batch)
        pending.writes = {}
        if delete_all or alarm_changed or pending.sql_dirty:
            pending.delete_all = pending.alarm_changed = pending.sql_dirty = False
            pending.alarm = None
            if delete_all:
                self._cache = None
                self._cache_bytes = 0
            if alarm_changed:
                self._alarm = batch.alarm
        if batch.name is not None:
            self._pending_name = None
        for k, v in writes.items():
            self._remember(k, v)
        return batch

    def _batch_done(self, layer: _Layer, batch: WriteBatch) -> None:
        """A batch is durable: move its values into the clean cache."""
        cast("builtins.list[_Layer]", self._inflight).remove(layer)
        if batch.name is not None:
            self._pending_name = None
        if layer.delete_all:
            self._cache = None
            self._cache_bytes = 0
        for k, v in layer.writes.items():
            self._remember(k, v)
        if layer.alarm_changed:
            self._alarm = layer.alarm

    def _forget_alarm(self) -> None:
        """Read the alarm from the backend next time (a failed alarm run)."""
        self._alarm = _MISS

    def _discard(self) -> None:
        """Drop everything not committed (the object was reset)."""
        sql = self._sql
        if sql is not None:
            sql._drop_cursors()
        if sql is not None and sql._conn is not None:
            with contextlib.suppress(Exception):
                if sql._conn.in_transaction:
                    sql._conn.execute("ROLLBACK")
        self._layers = [_Layer()]
        self._inflight = ()
        self._cache = None
        self._cache_bytes = 0
        self._alarm = _MISS

    @property
    def _has_pending(self) -> bool:
        """True while some write is not committed yet."""
        return bool(self._layers[0]) or bool(self._inflight) or len(self._layers) > 1
