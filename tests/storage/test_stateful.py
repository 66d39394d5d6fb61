"""Each built-in backend against a model: a dict, its sorted keys and an alarm."""

from __future__ import annotations

import shutil
import tempfile
from typing import TYPE_CHECKING, Any, TypeVar

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pyobjects.storage import (
    AlarmEntry,
    ListQuery,
    MemoryBackend,
    SQLiteBackend,
    WriteBatch,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from pyobjects.storage import ObjectStore, StorageBackend

T = TypeVar("T")

NAMESPACES = ("alpha", "beta")
OBJECT_IDS = (f"{1:064x}", f"{2:064x}")
OBJECTS = [(ns, object_id) for ns in NAMESPACES for object_id in OBJECT_IDS]
UNCHANGED = object()

objects = st.sampled_from(OBJECTS)
keys = st.text(st.sampled_from("ab\x00\uffff\U0001f600"), max_size=3)
values = st.binary(max_size=3)
bounds = st.none() | keys


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must finish without suspending (local backends)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coroutine.close()
    raise AssertionError("a local storage backend suspended")


class BackendMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.backend = self.make_backend()
        self.handles: dict[tuple[str, str], ObjectStore] = {}
        self.data: dict[tuple[str, str], dict[str, bytes]] = {o: {} for o in OBJECTS}
        self.alarms: dict[tuple[str, str], int] = {}

    def make_backend(self) -> StorageBackend:
        raise NotImplementedError

    def store(self, obj: tuple[str, str]) -> ObjectStore:
        if obj not in self.handles:
            self.handles[obj] = self.backend.open(*obj)
        return self.handles[obj]

    @rule(
        obj=objects,
        delete_all=st.booleans(),
        writes=st.dictionaries(keys, st.none() | values, max_size=4),
        alarm=st.sampled_from([UNCHANGED, None]) | st.integers(0, 2**40),
        name=st.none() | st.sampled_from(["x", "y"]),
    )
    def commit(
        self,
        obj: tuple[str, str],
        delete_all: bool,
        writes: dict[str, bytes | None],
        alarm: object,
        name: str | None,
    ) -> None:
        changed = alarm is not UNCHANGED
        new_alarm = alarm if isinstance(alarm, int) else None
        batch = WriteBatch(
            delete_all=delete_all,
            writes=writes,
            alarm_changed=changed,
            alarm=new_alarm,
            name=name,
        )
        run(self.store(obj).commit(batch))
        data = self.data[obj]
        if delete_all:
            data.clear()
        for key, value in writes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        if changed:
            if new_alarm is None:
                self.alarms.pop(obj, None)
            else:
                self.alarms[obj] = new_alarm

    @rule(obj=objects, wanted=st.lists(keys, max_size=4))
    def get(self, obj: tuple[str, str], wanted: list[str]) -> None:
        data = self.data[obj]
        expected = [(key, data[key]) for key in sorted(set(wanted)) if key in data]
        assert list(run(self.store(obj).get(wanted)).items()) == expected

    @rule(
        obj=objects,
        start=bounds,
        end=bounds,
        reverse=st.booleans(),
        limit=st.none() | st.integers(0, 4),
    )
    def list_range(
        self,
        obj: tuple[str, str],
        start: str | None,
        end: str | None,
        reverse: bool,
        limit: int | None,
    ) -> None:
        data = self.data[obj]
        expected = [
            (key, data[key])
            for key in sorted(data, reverse=reverse)
            if (start is None or key >= start) and (end is None or key < end)
        ][:limit]
        query = ListQuery(start=start, end=end, reverse=reverse, limit=limit)
        assert run(self.store(obj).list(query)) == expected

    @rule(obj=objects)
    def get_alarm(self, obj: tuple[str, str]) -> None:
        assert run(self.store(obj).get_alarm()) == self.alarms.get(obj)

    @rule(obj=objects)
    def close_handle(self, obj: tuple[str, str]) -> None:
        handle = self.handles.pop(obj, None)
        if handle is not None:
            handle.close()

    @invariant()
    def objects_and_alarms(self) -> None:
        for ns in NAMESPACES:
            expected = sorted(
                object_id
                for namespace, object_id in OBJECTS
                if namespace == ns
                and (self.data[ns, object_id] or (ns, object_id) in self.alarms)
            )
            assert run(self.backend.list_object_ids(ns)) == expected
        pending = run(self.backend.pending_alarms())
        assert sorted(pending, key=lambda e: (e.namespace, e.object_id)) == [
            AlarmEntry(namespace=ns, object_id=object_id, time_ms=time_ms)
            for (ns, object_id), time_ms in sorted(self.alarms.items())
        ]

    def teardown(self) -> None:
        run(self.backend.aclose())


class MemoryMachine(BackendMachine):
    def make_backend(self) -> StorageBackend:
        return MemoryBackend()


class SQLiteMachine(BackendMachine):
    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pyobjects-stateful-")
        super().__init__()

    def make_backend(self) -> StorageBackend:
        # Two connections for four objects: eviction happens all the time.
        return SQLiteBackend(self.directory, synchronous="off", max_open_connections=2)

    @rule(fresh=st.booleans())
    def restart(self, fresh: bool) -> None:
        # A new instance on the same directory, or the closed one reused.
        run(self.backend.aclose())
        if fresh:
            self.handles.clear()
            self.backend = self.make_backend()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            shutil.rmtree(self.directory)


SETTINGS = settings(
    max_examples=60, stateful_step_count=30, deadline=None, database=None
)
TestMemoryBackend = MemoryMachine.TestCase
TestMemoryBackend.settings = settings(SETTINGS, max_examples=100)
TestSQLiteBackend = SQLiteMachine.TestCase
TestSQLiteBackend.settings = settings(SETTINGS, max_examples=75)
