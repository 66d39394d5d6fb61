"""The conformance suite every storage backend must pass.

In the spirit of trio's ``check_*_stream`` helpers: one coroutine that runs
many small checks with plain ``assert`` statements, so a third-party backend
can be tested with a single line::

    async def test_my_backend() -> None:
        await check_storage_backend(MyBackend)

Each check works in namespaces of its own, with a random prefix, so the suite
may run on a backend that already holds data. Persistence across backend
instances is left to backend-specific tests.
"""

from __future__ import annotations

import inspect
import secrets
import typing
from itertools import product
from typing import TYPE_CHECKING

from pyobjects.storage._base import MAX_ALARM_MS, AlarmEntry, ListQuery, WriteBatch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pyobjects.storage._base import ObjectStore, StorageBackend

__all__ = ["check_storage_backend"]


async def check_storage_backend(
    make_backend: Callable[[], Awaitable[StorageBackend]]
    | Callable[[], StorageBackend],
) -> None:
    """Check that the backend made by *make_backend* follows the protocol.

    The backend is made once (awaiting the result if it is awaitable), put
    through every check and closed with ``aclose()`` at the end.

    Raises:
        AssertionError: On the first behaviour that breaks the protocol; the
            message says what was expected.
    """
    made = make_backend()
    backend = await made if inspect.isawaitable(made) else made
    try:
        run = _Run(backend)
        for check in _CHECKS:
            await check(run)
    finally:
        await backend.aclose()


class _Run:
    """The backend under test, plus a fresh namespace per check."""

    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend
        self._prefix = f"conformance-{secrets.token_hex(4)}"

    def namespace(self, name: str) -> str:
        return f"{self._prefix}-{name}"

    async def open(self, namespace: str, number: int) -> ObjectStore:
        """Open a store, then activate it if the backend asks for that.

        A server-backed store has an ``activate()`` coroutine (taking the
        object's lease, say) that the runtime awaits before the object's
        constructor runs; the suite does the same.
        """
        store = self.backend.open(namespace, _object_id(number))
        activate = getattr(store, "activate", None)
        if activate is not None:
            await activate()
        return store


def _object_id(number: int) -> str:
    return f"{number:064x}"


def _expect(actual: object, expected: object, what: str) -> None:
    assert actual == expected, f"{what}: expected {expected!r}, got {actual!r}"


async def _put(store: ObjectStore, **writes: bytes | None) -> None:
    await store.commit(WriteBatch(writes=writes))


async def _items(store: ObjectStore) -> list[tuple[str, bytes]]:
    return await store.list(ListQuery())


async def _check_get(run: _Run) -> None:
    store = await run.open(run.namespace("get"), 1)
    _expect(await store.get(["a"]), {}, "get() of a key of a new object")
    _expect(await store.get([]), {}, "get() of no keys")
    await _put(store, a=b"1", b=b"2", c=b"", d=bytes(range(256)))
    _expect(await store.get(["a"]), {"a": b"1"}, "get() of a stored key")
    _expect(await store.get(["c"]), {"c": b""}, "an empty value is a value")
    _expect(await store.get(["d"]), {"d": bytes(range(256))}, "binary value")
    got = await store.get(["zz", "c", "missing", "a", "b"])
    _expect(
        list(got.items()),
        [("a", b"1"), ("b", b"2"), ("c", b"")],
        "get() of many keys returns only the existing ones, in key order",
    )
    assert all(type(value) is bytes for value in got.values()), (
        f"values must be bytes, got {got!r}"
    )
    store.close()


async def _check_overwrite_and_delete(run: _Run) -> None:
    store = await run.open(run.namespace("overwrite"), 1)
    await _put(store, a=b"1", b=b"2")
    await _put(store, a=b"one")
    _expect(await store.get(["a", "b"]), {"a": b"one", "b": b"2"}, "overwrite")
    await _put(store, a=None, missing=None)
    _expect(await _items(store), [("b", b"2")], "delete via None")
    await store.commit(WriteBatch(writes={"b": None, "c": b"3"}))
    _expect(await _items(store), [("c", b"3")], "delete and put in one batch")
    store.close()


async def _check_delete_all(run: _Run) -> None:
    store = await run.open(run.namespace("delete-all"), 1)
    await store.commit(WriteBatch(delete_all=True))
    _expect(await _items(store), [], "delete_all on an empty object")
    await _put(store, a=b"1", b=b"2", c=b"3")
    await store.commit(
        WriteBatch(delete_all=True, writes={"b": b"new", "d": b"4", "e": None})
    )
    _expect(
        await _items(store),
        [("b", b"new"), ("d", b"4")],
        "delete_all, then the batch's writes",
    )
    await store.commit(WriteBatch(delete_all=True))
    _expect(await _items(store), [], "delete_all alone")
    _expect(await store.get(["b"]), {}, "get() after delete_all")
    store.close()


async def _check_atomicity(run: _Run) -> None:
    store = await run.open(run.namespace("atomic"), 1)
    await store.commit(
        WriteBatch(
            writes={"a": b"1", "b": b"2"}, alarm_changed=True, alarm=100, name="orig"
        )
    )
    # The last value is not bytes: a backend that rejects the batch must not
    # have applied any of it. A backend that cannot fail is not checked here.
    bad = typing.cast("bytes", object())
    batch = WriteBatch(
        delete_all=True,
        writes={"a": b"changed", "b": None, "c": b"3", "zz": bad},
        alarm_changed=True,
        alarm=200,
        name="changed",
    )
    try:
        await store.commit(batch)
    except Exception:  # any rejection will do
        _expect(
            await _items(store),
            [("a", b"1"), ("b", b"2")],
            "keys after a rejected batch (all or nothing)",
        )
        _expect(await store.get_alarm(), 100, "alarm after a rejected batch")
        _expect(await store.get_name(), "orig", "name after a rejected batch")
    store.close()


_LIST_KEYS = (
    "",
    "\x00",
    "\x00\x00",
    "a",
    "a\x00",
    "a\x00b",
    "a\x01",
    "ab",
    "b",
    "\x7f",
    "\x80",
    "\xe9",
    "\u20ac",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "\U00010000",
    "\U0001f600",
    "\U0010ffff",
)
_LIST_BOUNDS = (
    None,
    "",
    "\x00",
    "a",
    "a\x00",
    "aa",
    "b",
    "c",
    "\uffff",
    "\U0001f600",
    "\U0010ffff",
)


async def _check_list(run: _Run) -> None:
    store = await run.open(run.namespace("list"), 1)
    _expect(await _items(store), [], "list() of a new object")
    _expect(
        await store.list(ListQuery(reverse=True, limit=3)),
        [],
        "reverse list() of a new object",
    )
    model = {key: f"value {i}".encode() for i, key in enumerate(_LIST_KEYS)}
    # Shuffle the batch order so that nothing relies on insertion order.
    await store.commit(WriteBatch(writes=dict(reversed(model.items()))))
    by_code_point = sorted(model, key=lambda key: [ord(c) for c in key])
    _expect(
        [key for key, _ in await _items(store)],
        by_code_point,
        "keys are ordered by code point (UTF-8 byte order, not UTF-16)",
    )
    _expect(
        list((await store.get(list(model))).items()),
        [(key, model[key]) for key in by_code_point],
        "get() of every key, in key order",
    )
    limits = (None, 0, 1, 2, 5, 100)
    for start, end, reverse, limit in product(
        _LIST_BOUNDS, _LIST_BOUNDS, (False, True), limits
    ):
        query = ListQuery(start=start, end=end, reverse=reverse, limit=limit)
        expected = [
            (key, model[key])
            for key in by_code_point
            if (start is None or key >= start) and (end is None or key < end)
        ]
        if reverse:
            expected.reverse()
        if limit is not None:
            expected = expected[:limit]
        _expect(await store.list(query), expected, f"list({query})")
    store.close()


async def _check_many_keys(run: _Run) -> None:
    store = await run.open(run.namespace("many"), 1)
    model = {f"key{i:04d}": i.to_bytes(2, "big") for i in range(500)}
    await store.commit(WriteBatch(writes=model))
    _expect(await _items(store), sorted(model.items()), "list() of 500 keys")
    _expect(
        await store.list(ListQuery(start="key0100", reverse=True, limit=3)),
        [(key, model[key]) for key in ("key0499", "key0498", "key0497")],
        "reverse list() with a limit takes the largest keys",
    )
    await store.commit(WriteBatch(writes=dict.fromkeys(list(model)[::2])))
    _expect(
        await _items(store),
        sorted(model.items())[1::2],
        "list() after deleting every other key",
    )
    store.close()


async def _check_isolation(run: _Run) -> None:
    one, two = run.namespace("isolation-1"), run.namespace("isolation-2")
    a, b, c = await run.open(one, 1), await run.open(one, 2), await run.open(two, 1)
    await a.commit(
        WriteBatch(writes={"k": b"a"}, alarm_changed=True, alarm=5, name="a")
    )
    await b.commit(WriteBatch(writes={"k": b"b", "only-b": b"b"}))
    await c.commit(WriteBatch(writes={"k": b"c"}))
    _expect(await _items(a), [("k", b"a")], "object 1 of namespace 1")
    _expect(await _items(b), [("k", b"b"), ("only-b", b"b")], "another object")
    _expect(await _items(c), [("k", b"c")], "the same id in another namespace")
    _expect(await b.get_alarm(), None, "the alarm belongs to one object")
    _expect(await c.get_alarm(), None, "the alarm belongs to one namespace")
    _expect(await c.get_name(), None, "the name belongs to one namespace")
    await b.commit(WriteBatch(delete_all=True))
    _expect(await _items(a), [("k", b"a")], "delete_all of another object")
    _expect(await _items(c), [("k", b"c")], "delete_all in another namespace")
    for store in (a, b, c):
        store.close()


async def _check_alarm(run: _Run) -> None:
    store = await run.open(run.namespace("alarm"), 1)
    _expect(await store.get_alarm(), None, "alarm of a new object")
    await store.commit(WriteBatch(alarm_changed=True, alarm=1_000))
    _expect(await store.get_alarm(), 1_000, "alarm after setting it")
    await store.commit(WriteBatch(writes={"k": b"v"}, alarm=5))
    _expect(await store.get_alarm(), 1_000, "alarm when alarm_changed is False")
    await store.commit(WriteBatch(alarm_changed=True, alarm=2**53))
    _expect(await store.get_alarm(), 2**53, "alarm after replacing it")
    await store.commit(WriteBatch(delete_all=True))
    _expect(await store.get_alarm(), 2**53, "delete_all does not touch the alarm")
    await store.commit(WriteBatch(alarm_changed=True, alarm=None))
    _expect(await store.get_alarm(), None, "alarm after clearing it")
    await store.commit(WriteBatch(alarm_changed=True, alarm=None))
    _expect(await store.get_alarm(), None, "clearing a cleared alarm")
    await store.commit(WriteBatch(alarm_changed=True, alarm=MAX_ALARM_MS))
    _expect(await store.get_alarm(), MAX_ALARM_MS, "the latest alarm time")
    too_late = WriteBatch(writes={"w": b"v"}, alarm_changed=True, alarm=2**63)
    try:
        await store.commit(too_late)
    except ValueError:
        pass
    else:
        raise AssertionError("an alarm of 2**63 or more must raise ValueError")
    _expect(await store.get_alarm(), MAX_ALARM_MS, "alarm after a refused one")
    _expect(await store.get(["w"]), {}, "writes of a batch with a refused alarm")
    await store.commit(WriteBatch(alarm_changed=True, alarm=0))
    _expect(await store.get_alarm(), 0, "an alarm at time 0")
    store.close()


async def _check_name(run: _Run) -> None:
    namespace = run.namespace("name")
    store = await run.open(namespace, 1)
    _expect(await store.get_name(), None, "name of a new object")
    await store.commit(WriteBatch(writes={"k": b"v"}, name="alpha"))
    _expect(await store.get_name(), "alpha", "name after a commit carrying it")
    await _put(store, other=b"v")
    _expect(await store.get_name(), "alpha", "a commit without name keeps it")
    store.close()
    _expect(
        await (await run.open(namespace, 1)).get_name(), "alpha", "name after close()"
    )


async def _check_list_object_ids(run: _Run) -> None:
    namespace, other = run.namespace("ids"), run.namespace("ids-other")
    backend = run.backend
    _expect(await backend.list_object_ids(namespace), [], "ids of a new namespace")
    await run.open(namespace, 9)  # opened, never written
    await _put(await run.open(namespace, 7), k=b"v")
    await (await run.open(namespace, 3)).commit(
        WriteBatch(alarm_changed=True, alarm=10)
    )
    await _put(await run.open(namespace, 5), k=b"v")
    await _put(await run.open(namespace, 5), k=None)
    alarm_cleared = await run.open(namespace, 4)
    await alarm_cleared.commit(WriteBatch(alarm_changed=True, alarm=10))
    await alarm_cleared.commit(WriteBatch(alarm_changed=True, alarm=None))
    emptied = await run.open(namespace, 6)
    await emptied.commit(WriteBatch(writes={"k": b"v"}, alarm_changed=True, alarm=1))
    await emptied.commit(WriteBatch(delete_all=True))
    await _put(await run.open(other, 8), k=b"v")
    _expect(
        await backend.list_object_ids(namespace),
        [_object_id(3), _object_id(6), _object_id(7)],
        "ids of the objects holding a key or an alarm, sorted",
    )
    _expect(await backend.list_object_ids(other), [_object_id(8)], "other ids")
    for number in range(3, 10):
        (await run.open(namespace, number)).close()


async def _pending(run: _Run, *namespaces: str) -> list[tuple[str, str, int]]:
    entries = await run.backend.pending_alarms()
    assert all(type(entry) is AlarmEntry for entry in entries), (
        f"pending_alarms() must return AlarmEntry objects, got {entries!r}"
    )
    mine = [
        (entry.namespace, entry.object_id, entry.time_ms)
        for entry in entries
        if entry.namespace in namespaces
    ]
    assert len({entry[:2] for entry in mine}) == len(mine), (
        f"pending_alarms() lists an object twice: {mine!r}"
    )
    return sorted(mine)


async def _check_pending_alarms(run: _Run) -> None:
    one, two = run.namespace("alarms-1"), run.namespace("alarms-2")
    _expect(await _pending(run, one, two), [], "no alarms pending yet")
    a, b, c = await run.open(one, 1), await run.open(one, 2), await run.open(two, 1)
    await a.commit(WriteBatch(alarm_changed=True, alarm=300))
    await b.commit(WriteBatch(writes={"k": b"v"}, alarm_changed=True, alarm=100))
    await c.commit(WriteBatch(alarm_changed=True, alarm=200))
    expected = [(one, _object_id(1), 300), (one, _object_id(2), 100)]
    expected.append((two, _object_id(1), 200))
    _expect(await _pending(run, one, two), expected, "pending alarms")
    await a.commit(WriteBatch(alarm_changed=True, alarm=50))
    await b.commit(WriteBatch(delete_all=True))
    await c.commit(WriteBatch(alarm_changed=True, alarm=None))
    _expect(
        await _pending(run, one, two),
        [(one, _object_id(1), 50), (one, _object_id(2), 100)],
        "pending alarms after replacing, delete_all and clearing",
    )
    for store in (a, b):
        await store.commit(WriteBatch(alarm_changed=True, alarm=None))
        store.close()
    _expect(await _pending(run, one, two), [], "every alarm cleared")


async def _check_close_and_reopen(run: _Run) -> None:
    namespace = run.namespace("reopen")
    store = await run.open(namespace, 1)
    await store.commit(
        WriteBatch(writes={"k": b"v"}, alarm_changed=True, alarm=7, name="n")
    )
    store.close()
    store.close()  # closing twice is harmless
    again = await run.open(namespace, 1)
    _expect(await _items(again), [("k", b"v")], "data after close() and open()")
    _expect(await again.get_alarm(), 7, "alarm after close() and open()")
    _expect(await again.get_name(), "n", "name after close() and open()")
    twin = await run.open(namespace, 1)
    await _put(twin, k=b"twin")
    _expect(await again.get(["k"]), {"k": b"twin"}, "two handles see one object")
    twin.close()
    await _put(again, k2=b"after")
    _expect(await _items(again), [("k", b"twin"), ("k2", b"after")], "other handle")
    await again.commit(WriteBatch(alarm_changed=True, alarm=None))
    again.close()


_BAD_NAMESPACES = ("", ".", "..", "a/b", "../x", "a b", "ns\n", "\xe9", "x" * 129)
_BAD_IDS = ("", "0" * 63, "0" * 65, "A" * 64, "g" * 64, "0" * 63 + "\n", "../" * 21)


async def _check_validation(run: _Run) -> None:
    backend = run.backend
    for namespace in _BAD_NAMESPACES:
        try:
            backend.open(namespace, _object_id(1))
        except ValueError:
            pass
        else:
            raise AssertionError(f"open() in namespace {namespace!r} must fail")
        try:
            await backend.list_object_ids(namespace)
        except ValueError:
            pass
        else:
            raise AssertionError(f"list_object_ids({namespace!r}) must fail")
    for object_id in _BAD_IDS:
        try:
            backend.open(run.namespace("valid"), object_id)
        except ValueError:
            continue
        raise AssertionError(f"open() of object id {object_id!r} must fail")
    for namespace in (run.namespace("long").ljust(128, "x"), run.namespace("A-z_.9")):
        store = backend.open(namespace, _object_id(1))
        await _put(store, k=b"v")
        _expect(await _items(store), [("k", b"v")], f"namespace {namespace!r}")
        _expect(await backend.list_object_ids(namespace), [_object_id(1)], "ids")
        store.close()


async def _check_sql(run: _Run) -> None:
    """The optional SQL capability: KV batch and SQL transaction commit as one."""
    namespace = run.namespace("sql")
    store = await run.open(namespace, 1)
    opener = getattr(store, "sql_connection", None)
    if opener is None:
        store.close()
        return  # a backend without SQL: nothing to check
    conn = opener()
    _expect(conn is not None, True, "sql_connection() returns a connection")
    _expect(conn.in_transaction, False, "a fresh connection is in autocommit mode")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (1)")
    await store.commit(WriteBatch(writes={"k": b"v"}))
    _expect(conn.in_transaction, False, "commit() ends the open SQL transaction")
    # A batch that fails leaves the SQL of its transaction uncommitted too.
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (2)")
    try:
        await store.commit(WriteBatch(writes={"k": "not bytes"}))  # type: ignore[dict-item]
    except TypeError:
        pass
    else:
        raise AssertionError("commit() of a bad batch must raise TypeError")
    if conn.in_transaction:
        conn.execute("ROLLBACK")  # what the front end does on a failed commit
    store.close()
    again = await run.open(namespace, 1)
    reopened = getattr(again, "sql_connection")(create=False)  # noqa: B009
    _expect(reopened is not None, True, "the database exists after a commit")
    rows = reopened.execute("SELECT a FROM t").fetchall()
    _expect(rows, [(1,)], "committed SQL rows after close() and open()")
    _expect(await again.get(["k"]), {"k": b"v"}, "KV committed with the SQL")
    _expect(
        await run.backend.list_object_ids(namespace),
        [_object_id(1)],
        "an object with data is listed",
    )
    reopened.execute("DROP TABLE t")
    await again.commit(WriteBatch(delete_all=True))
    again.close()
    empty = await run.open(namespace, 2)
    _expect(getattr(empty, "sql_connection")(create=False), None, "no database yet")  # noqa: B009
    empty.close()


_CHECKS = (
    _check_get,
    _check_overwrite_and_delete,
    _check_delete_all,
    _check_atomicity,
    _check_list,
    _check_many_keys,
    _check_isolation,
    _check_alarm,
    _check_name,
    _check_list_object_ids,
    _check_pending_alarms,
    _check_close_and_reopen,
    _check_validation,
    _check_sql,
)
