"""The short paths of the hot loop (issue #16) keep every semantic of the long ones.

A store whose commit is a plain function is committed inline; the pending
layer is emptied in place; short ASCII keys skip measuring; scalars encode
through a shared packer; namespace names and object ids are checked without
a regular expression. Each test here fails if its short path differs from
the long one.
"""

from __future__ import annotations

import gc
import re
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
from hypothesis import given, strategies as st

from pyobjects import DurableObject, DurableObjectResetError, Runtime
from pyobjects._serialization import decode, encode
from pyobjects.storage import MemoryBackend, SQLiteBackend
from pyobjects.storage._base import WriteBatch, check_namespace, check_object_id

from .helpers import ControlledBackend

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pyobjects.storage import StorageBackend


class Keeper(DurableObject):
    async def put(self, key: str, value: Any) -> None:
        self.ctx.storage.put(key, value)

    async def wipe_then_put(self, key: str, value: Any) -> None:
        self.ctx.storage.delete_all()
        self.ctx.storage.put(key, value)

    async def wipe(self) -> None:
        self.ctx.storage.delete_all()

    async def set_alarm(self, at: int) -> None:
        self.ctx.storage.set_alarm(at)

    async def get_alarm(self) -> int | None:
        return await self.ctx.storage.get_alarm()

    async def read(self) -> dict[str, Any]:
        return await self.ctx.storage.list()

    async def alarm(self) -> None:
        pass


@pytest.fixture(params=["memory", "sqlite"])
def local_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageBackend:
    """The built-in backends whose commit is a plain function."""
    if request.param == "memory":
        return MemoryBackend()
    return SQLiteBackend(tmp_path / "data")


async def test_a_delete_all_commits_once_not_with_every_later_batch(
    local_backend: StorageBackend,
) -> None:
    # The pending layer is reused after an inline commit: its delete_all
    # flag must not survive into the next batch.
    async with Runtime(bindings={"K": Keeper}, storage=local_backend) as rt:
        stub = rt.env.K.get_by_name("k")
        await stub.put("a", 1)
        await stub.wipe_then_put("b", 2)
        await stub.put("c", 3)
        await stub.put("d", 4)
        assert await stub.read() == {"b": 2, "c": 3, "d": 4}
    async with Runtime(bindings={"K": Keeper}, storage=local_backend) as rt:
        assert await rt.env.K.get_by_name("k").read() == {"b": 2, "c": 3, "d": 4}


async def test_an_alarm_change_commits_once_not_with_every_later_batch(
    local_backend: StorageBackend,
) -> None:
    controlled = ControlledBackend(local_backend)
    async with Runtime(bindings={"K": Keeper}, storage=controlled) as rt:
        stub = rt.env.K.get_by_name("k")
        await stub.set_alarm(10**13)
        await stub.put("a", 1)
        await stub.wipe()
        await stub.put("b", 2)
        changed = [(c.alarm_changed, c.delete_all) for c in controlled.commits]
        assert changed == [(True, False), (False, False), (True, True), (False, False)]
        assert await stub.get_alarm() is None


async def test_a_wrapper_that_delegates_attributes_keeps_its_own_commit() -> None:
    # ControlledStore forwards unknown attributes to the store it wraps, so a
    # look-up on the instance would find the inner store's plain commit and
    # skip the wrapper's; the output gate looks on the type.
    controlled = ControlledBackend(MemoryBackend())
    controlled.fail_next = 1
    async with Runtime(bindings={"K": Keeper}, storage=controlled) as rt:
        stub = rt.env.K.get_by_name("k")
        with pytest.raises(DurableObjectResetError, match="injected commit failure"):
            await stub.put("a", 1)
        assert len(controlled.commits) == 1
        assert await rt.env.K.get_by_name("k").read() == {}


class Deferred(DurableObject):
    async def setup(self) -> None:
        sql = self.ctx.storage.sql
        sql.exec("CREATE TABLE p (id INTEGER PRIMARY KEY)")
        sql.exec(
            "CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)"
        )

    async def orphan(self) -> None:
        self.ctx.storage.put("k", 1)
        self.ctx.storage.sql.exec("INSERT INTO c VALUES (42)")

    async def read(self) -> dict[str, Any]:
        return await self.ctx.storage.list()


async def test_an_inline_commit_that_fails_resets_the_object(
    local_backend: StorageBackend,
) -> None:
    # A deferred foreign key fails at COMMIT, inside the plain-function commit.
    async with Runtime(bindings={"D": Deferred}, storage=local_backend) as rt:
        stub = rt.env.D.get_by_name("d")
        await stub.setup()
        with pytest.raises(DurableObjectResetError) as caught:
            await stub.orphan()
        assert getattr(caught.value, "durable_object_reset", False)
        with pytest.raises(DurableObjectResetError):
            await stub.read()  # this stub saw the reset
        assert await rt.env.D.get_by_name("d").read() == {}


async def test_the_memory_backend_still_checks_batches_committed_directly() -> None:
    store = MemoryBackend().open("ns", "0" * 64)
    with pytest.raises(TypeError, match="values must be bytes"):
        await store.commit(WriteBatch(writes={"k": "not bytes"}))  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="alarm must be in"):
        await store.commit(WriteBatch(alarm_changed=True, alarm=-1))


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("k" * 2048, True),
        ("k" * 2049, False),
        ("é" * 1024, True),  # 2,048 UTF-8 bytes
        ("é" * 1025, False),  # 1,025 characters, but 2,050 bytes
        ("\ud800", False),  # no UTF-8 form
    ],
)
async def test_keys_are_measured_in_utf8_bytes_on_every_path(
    key: str, ok: bool
) -> None:
    async with Runtime(bindings={"K": Keeper}) as rt:
        stub = rt.env.K.get_by_name("k")
        if ok:
            await stub.put(key, 1)
            assert await stub.read() == {key: 1}
        else:
            with pytest.raises((ValueError, TypeError)):
                await stub.put(key, 1)


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        -1,
        127,
        128,
        -32,
        -33,
        2**16,
        2**32,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**40,
        -(10**40),
        True,
        False,
        None,
        0.0,
        -0.0,
        1.5,
        float("inf"),
        1e300,
    ],
)
def test_scalars_encode_as_a_fresh_packer_would(value: object) -> None:
    fresh = msgpack.Packer(strict_types=True, use_bin_type=True)
    try:
        expected = fresh.pack(value)
    except OverflowError:  # big ints go through the codec's ext type
        expected = None
    data = encode(value)
    if expected is not None:
        assert data == expected
    back = decode(data)
    assert back == value
    assert type(back) is type(value)


def test_a_subclass_of_int_is_still_refused() -> None:
    class Flag(int):
        pass

    with pytest.raises(Exception, match="subclass"):
        encode(Flag(1))


_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_OBJECT_ID = re.compile(r"[0-9a-f]{64}")
_NEAR_NAMES = st.text(alphabet="aZ09_.-/é \n", max_size=130)
_NEAR_IDS = st.text(alphabet="0123456789abcdefA \n", min_size=62, max_size=66)


def _accepts(check: Callable[[object], None], value: object) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


@given(st.one_of(_NEAR_NAMES, st.sampled_from([".", "..", "a" * 128, "a" * 129])))
def test_namespace_names_are_checked_as_the_pattern_says(name: str) -> None:
    expected = _NAMESPACE.fullmatch(name) is not None and name not in {".", ".."}
    assert _accepts(check_namespace, name) is expected


@given(st.one_of(_NEAR_IDS, st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 32 + "\n"])))
def test_object_ids_are_checked_as_the_pattern_says(object_id: str) -> None:
    expected = _OBJECT_ID.fullmatch(object_id) is not None
    assert _accepts(check_object_id, object_id) is expected


def test_names_and_ids_that_are_not_str_are_refused() -> None:
    assert not _accepts(check_namespace, b"ns")
    assert not _accepts(check_object_id, 12)


class Empty(DurableObject):
    async def ping(self) -> int:
        return 1


async def test_an_idle_instance_holds_few_objects_for_the_cyclic_gc() -> None:
    # Creating many objects is dominated by the garbage collector scanning the
    # live instances, so each holds only what it needs: no empty queue, set,
    # list or cache until one is used. (It was 16 objects before #16.)
    async with Runtime(bindings={"E": Empty}, idle_timeout=3600) as rt:
        ns = rt.env.E
        for i in range(20):  # past everything made once per runtime
            await ns.get_by_name(f"warm{i}").ping()
        gc.collect()
        before = len(gc.get_objects())
        for i in range(200):
            await ns.get_by_name(f"o{i}").ping()
        gc.collect()
        per_instance = (len(gc.get_objects()) - before) / 200
        assert rt.statistics().live_objects == 220
        assert per_instance <= 11.5
