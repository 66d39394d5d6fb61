"""The KV storage API (reference §4-5), on every built-in backend."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    Runtime,
    SerializationError,
    StorageLimitError,
    TransactionError,
)
from pyobjects.storage import Storage, StorageBackend, Transaction
from pyobjects.testing import run_in_durable_object

T = TypeVar("T")


class Plain(DurableObject):
    pass


Body = Callable[[Storage], Awaitable[T]]


class Harness:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.stub = rt.env.P.get_by_name("obj")

    async def run(self, body: Body[T]) -> T:
        async def inside(obj: Any, ctx: pyobjects.DurableObjectState) -> T:
            return await body(ctx.storage)

        return await run_in_durable_object(self.stub, inside)


@pytest.fixture
async def h(backend: StorageBackend) -> AsyncIterator[Harness]:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:
        yield Harness(rt)


async def test_get_put_delete_single(h: Harness) -> None:
    async def body(s: Storage) -> None:
        assert await s.get("missing") is None
        await s.put("a", 1)
        assert await s.get("a") == 1
        s.put("a", None)  # a stored None reads like a missing key through get()
        assert await s.get("a") is None
        assert await s.get(["a"]) == {"a": None}
        assert await s.delete("a") is True
        assert await s.delete("a") is False
        assert await s.get(["a"]) == {}

    await h.run(body)


async def test_batch_calls(h: Harness) -> None:
    async def body(s: Storage) -> None:
        await s.put({"c": 3, "a": 1, "b": 2})
        got = await s.get(["c", "zz", "a"])
        assert got == {"a": 1, "c": 3}
        assert list(got) == ["a", "c"]  # key order, not request order
        assert await s.delete(["a", "b", "nope"]) == 2
        assert await s.list() == {"c": 3}

    await h.run(body)
    # Committed values are read back after the call too.
    assert await h.run(lambda s: s.get("c")) == 3


async def test_values_round_trip_as_fresh_copies(h: Harness) -> None:
    value = {
        "list": [1, [2, 3]],
        "tuple": (1, (2,)),
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "bytes": b"\x00\xff",
        "big": 2**100,
        "float": float("inf"),
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        "day": dt.date(2026, 1, 2),
        "money": Decimal("1.10"),
        "uuid": uuid.UUID(int=5),
        "none": None,
        "bool": True,
    }

    async def body(s: Storage) -> None:
        s.put("v", value)
        first = await s.get("v")
        assert first == value
        assert type(first["tuple"]) is tuple
        assert type(first["set"]) is set
        first["list"].append(99)
        assert await s.get("v") == value  # fresh copy each time

    await h.run(body)
    assert await h.run(lambda s: s.get("v")) == value


async def test_list_options(h: Harness) -> None:
    keys = ["", "a", "a\x00", "aa", "ab", "b", "ba", "\u00e9", "\uffff", "\U0001f600"]

    async def body(s: Storage) -> None:
        await s.put({k: i for i, k in enumerate(keys)})

    await h.run(body)
    for pending in (False, True):
        # Check once from committed storage and once with writes still pending.
        async def check(s: Storage, pending: bool = pending) -> None:
            if pending:
                s.put("zz-pending", 1)
                s.delete("zz-pending")
            assert list(await s.list()) == sorted(keys)
            assert list(await s.list(prefix="a")) == ["a", "a\x00", "aa", "ab"]
            assert list(await s.list(start="aa", end="b")) == ["aa", "ab"]
            assert list(await s.list(start_after="a")) == sorted(keys)[2:]
            assert list(await s.list(reverse=True, limit=2)) == ["\U0001f600", "\uffff"]
            assert list(await s.list(prefix="a", reverse=True, limit=3)) == [
                "ab",
                "aa",
                "a\x00",
            ]
            assert list(await s.list(start="b", limit=1)) == ["b"]
            assert await s.list(start="b", end="a") == {}
            assert await s.list(prefix="a", start="b") == {}
            assert list(await s.list(prefix="\uffff")) == ["\uffff"]

        await h.run(check)


async def test_list_sees_pending_writes_and_deletes(h: Harness) -> None:
    async def seed(s: Storage) -> None:
        await s.put({"a": 1, "b": 2, "c": 3, "d": 4})

    await h.run(seed)

    async def body(s: Storage) -> None:
        s.delete("a")
        s.delete("b")
        s.put("bb", 22)
        assert await s.list(limit=2) == {"bb": 22, "c": 3}
        assert await s.list(reverse=True, limit=2) == {"d": 4, "c": 3}
        s.delete_all()
        s.put("z", 26)
        assert await s.list() == {"z": 26}
        assert await s.get("c") is None

    await h.run(body)
    assert await h.run(lambda s: s.list()) == {"z": 26}


async def test_delete_all(h: Harness) -> None:
    async def body(s: Storage) -> None:
        await s.put({"a": 1, "b": 2})

    await h.run(body)

    async def wipe(s: Storage) -> None:
        s.put("pending", 1)
        await s.delete_all()
        assert await s.get("pending") is None

    await h.run(wipe)
    assert await h.run(lambda s: s.list()) == {}
    ids = await pyobjects.testing.list_durable_object_ids(h.rt.env.P)
    assert ids == []


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda s: s.put("k" * 2049, 1),
            StorageLimitError,
            "Keys cannot be larger than 2048 bytes. A key of size 2049",
        ),
        (lambda s: s.put("\u00e9" * 1025, 1), StorageLimitError, "size 2050"),
        (lambda s: s.get("k" * 2049), StorageLimitError, "2048"),
        (
            lambda s: s.put("v", b"x" * 131_072),
            StorageLimitError,
            "Values cannot be larger than 131072 bytes",
        ),
        (
            lambda s: s.put({f"k{i}": i for i in range(129)}),
            StorageLimitError,
            "Maximum number of key value pairs is 128. 129",
        ),
        (lambda s: s.get([f"k{i}" for i in range(129)]), StorageLimitError, "128"),
        (lambda s: s.delete([f"k{i}" for i in range(129)]), StorageLimitError, "128"),
        (lambda s: s.put("\ud800", 1), ValueError, "surrogate"),
        (lambda s: s.put(1, 1), TypeError, "must be a str"),
        (lambda s: s.put("v", object()), SerializationError, "object"),
        (
            lambda s: s.list(start="a", start_after="b"),
            TypeError,
            "both start and start_after",
        ),
        (lambda s: s.list(limit=0), ValueError, "List limit must be positive"),
        (lambda s: s.list(limit=-1), ValueError, "positive"),
        (lambda s: s.list(limit="1"), TypeError, "int"),
        (lambda s: s.put("a"), TypeError, "missing the value"),
        (lambda s: s.put({"a": 1}, 2), TypeError, "either"),
        (lambda s: s.delete(5), TypeError, "str key or a list"),
    ],
)
async def test_bad_input_raises_and_writes_nothing(
    h: Harness, call: Callable[[Storage], Any], error: type[Exception], match: str
) -> None:
    async def body(s: Storage) -> None:
        async def attempt() -> None:
            result = call(s)
            if hasattr(result, "__await__"):
                await result

        with pytest.raises(error, match=match):
            await attempt()
        assert await s.list() == {}

    await h.run(body)
    assert await h.run(lambda s: s.list()) == {}


async def test_one_bad_value_in_a_batch_writes_nothing(h: Harness) -> None:
    async def body(s: Storage) -> None:
        with pytest.raises(SerializationError):
            s.put({"a": 1, "b": object(), "c": 3})
        with pytest.raises(StorageLimitError):
            s.put({"a": 1, "k" * 3000: 2})
        assert await s.list() == {}

    await h.run(body)


async def test_exact_limits_are_accepted(h: Harness) -> None:
    async def body(s: Storage) -> None:
        s.put("k" * 2048, 1)
        s.put({f"k{i}": i for i in range(128)})
        # Find the largest bytes value whose encoding is exactly 131,072 bytes.
        size = 131_072 - 5
        s.put("big", b"x" * size)
        assert len(await s.get("big")) == size

    await h.run(body)


async def test_transaction_commits_on_return(h: Harness) -> None:
    async def body(s: Storage) -> str:
        async def closure(txn: Transaction) -> str:
            txn.put("a", 1)
            assert await txn.get("a") == 1
            await txn.put({"b": 2, "c": 3})
            assert await txn.delete("c") is True
            assert await txn.list() == {"a": 1, "b": 2}
            return "ok"

        return await s.transaction(closure)

    assert await h.run(body) == "ok"
    assert await h.run(lambda s: s.list()) == {"a": 1, "b": 2}


async def test_transaction_rolls_back_on_exception_without_reset(h: Harness) -> None:
    async def body(s: Storage) -> None:
        s.put("before", 1)

        async def closure(txn: Transaction) -> None:
            txn.put("a", 1)
            s.put("joined", 1)  # ctx.storage inside the closure joins it
            raise KeyError("nope")

        with pytest.raises(KeyError, match="nope"):
            await s.transaction(closure)
        assert await s.get("a") is None
        assert await s.get("joined") is None

    await h.run(body)
    assert await h.run(lambda s: s.list()) == {"before": 1}  # object not reset


async def test_transaction_as_context_manager_and_rollback(h: Harness) -> None:
    async def body(s: Storage) -> None:
        async with s.transaction() as txn:
            txn.put("kept", 1)
        async with s.transaction() as txn:
            txn.put("dropped", 1)
            txn.rollback()
            txn.rollback()  # may be called twice
            with pytest.raises(
                TransactionError, match=r"Cannot get\(\) on rolled back transaction"
            ):
                await txn.get("kept")
        with pytest.raises(
            TransactionError, match="already committed: did you move `txn` outside"
        ):
            txn.put("late", 1)

        async def failing() -> None:
            async with s.transaction() as txn:
                txn.put("dropped2", 1)
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await failing()

    await h.run(body)
    assert await h.run(lambda s: s.list()) == {"kept": 1}


async def test_rollback_returns_the_closure_result(h: Harness) -> None:
    async def body(s: Storage) -> int:
        async def closure(txn: Transaction) -> int:
            txn.put("x", 1)
            txn.rollback()
            return 42

        return await s.transaction(closure)

    assert await h.run(body) == 42
    assert await h.run(lambda s: s.list()) == {}


async def test_nested_transactions(h: Harness) -> None:
    async def body(s: Storage) -> None:
        async with s.transaction() as outer:
            outer.put("outer", 1)

            async def nested() -> None:
                async with s.transaction() as inner:
                    inner.put("inner", 1)
                    with pytest.raises(TransactionError, match="outer transaction"):
                        outer.rollback()
                    raise ValueError("inner")

            with pytest.raises(ValueError, match="inner"):
                await nested()
            assert await s.get("inner") is None
            assert await s.get("outer") == 1

    await h.run(body)
    assert await h.run(lambda s: s.list()) == {"outer": 1}


async def test_delete_all_is_refused_in_a_transaction(h: Harness) -> None:
    async def body(s: Storage) -> None:
        async with s.transaction() as txn:
            with pytest.raises(
                TransactionError,
                match=r"Cannot call delete_all\(\) within a transaction",
            ):
                s.delete_all()
            with pytest.raises(TransactionError, match="within a transaction"):
                txn.delete_all()

    await h.run(body)


async def test_transaction_is_serializable(backend: StorageBackend) -> None:
    class Bank(DurableObject):
        async def transfer(self) -> None:
            async def closure(txn: Transaction) -> None:
                a = (await txn.get("a")) or 0
                # Other events must not run in between.
                await anyio.lowlevel.checkpoint()
                txn.put("a", a + 1)

            await self.ctx.storage.transaction(closure)

        async def value(self) -> Any:
            return await self.ctx.storage.get("a")

    async with Runtime(bindings={"B": Bank}, storage=backend) as rt:
        stub = rt.env.B.get_by_name("x")
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(stub.transfer)
        assert await stub.value() == 50


async def test_transaction_writes_commit_atomically_in_one_batch() -> None:
    from pyobjects.storage import MemoryBackend
    from tests.helpers import ControlledBackend

    controlled = ControlledBackend(MemoryBackend())
    async with Runtime(bindings={"P": Plain}, storage=controlled) as rt:
        h = Harness(rt)

        async def body(s: Storage) -> None:
            async with s.transaction() as txn:
                txn.put("a", 1)
                await anyio.lowlevel.checkpoint()
                txn.put("b", 2)

        await h.run(body)
    assert [dict(c.writes) for c in controlled.commits] == [
        {"a": b"\x01", "b": b"\x02"}
    ]


async def test_sync_waits_for_durability(h: Harness) -> None:
    async def body(s: Storage) -> None:
        await s.sync()  # nothing pending: returns at once
        s.put("a", 1)
        await s.sync()

    await h.run(body)
