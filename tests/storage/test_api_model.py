"""Property test: the storage front end behaves like a dict, on every backend.

Random programs of puts, deletes, delete_all, gets, lists, yields, syncs,
transactions (committed, rolled back or raising) and runtime restarts run
against a real object and against a plain dict model; every read must agree,
and after each restart everything acknowledged must still be there.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from hypothesis import HealthCheck, given, settings, strategies as st

import pyobjects
from pyobjects import DurableObject, Runtime
from pyobjects.storage import MemoryBackend, SQLiteBackend, Storage, StorageBackend
from pyobjects.testing import run_in_durable_object

if TYPE_CHECKING:
    from collections.abc import Callable

keys = st.text(alphabet="ab\x00\u00e9\U0001f600", max_size=3)
values = st.one_of(
    st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)
)
list_options = st.fixed_dictionaries(
    {},
    optional={
        "start": keys,
        "end": keys,
        "prefix": keys,
        "reverse": st.booleans(),
        "limit": st.integers(min_value=1, max_value=4),
    },
) | st.fixed_dictionaries({"start_after": keys})

simple_ops = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("put_many"), st.dictionaries(keys, values, max_size=4)),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("delete_many"), st.lists(keys, max_size=4)),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("get_many"), st.lists(keys, max_size=4)),
    st.tuples(st.just("list"), list_options),
    st.tuples(st.just("yield")),
)
txn_ops = st.tuples(
    st.just("txn"),
    st.lists(simple_ops, max_size=6),
    st.sampled_from(["commit", "rollback", "raise"]),
    st.booleans(),  # use ctx.storage (joins the txn) instead of txn
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.lists(simple_ops, min_size=1, max_size=8)),
        txn_ops,
        st.tuples(st.just("delete_all")),
        st.tuples(st.just("sync")),
        st.tuples(st.just("restart")),
    ),
    max_size=25,
)


def model_list(model: dict[str, Any], options: dict[str, Any]) -> list[tuple[str, Any]]:
    selected = sorted(model)
    if "start" in options:
        selected = [k for k in selected if k >= options["start"]]
    if "start_after" in options:
        selected = [k for k in selected if k > options["start_after"]]
    if "end" in options:
        selected = [k for k in selected if k < options["end"]]
    if "prefix" in options:
        selected = [k for k in selected if k.startswith(options["prefix"])]
    if options.get("reverse"):
        selected.reverse()
    if "limit" in options:
        selected = selected[: options["limit"]]
    return [(k, model[k]) for k in selected]


class Abort(Exception):
    pass


class Plain(DurableObject):
    pass


async def apply(target: Any, op: tuple[Any, ...], model: dict[str, Any]) -> None:
    kind = op[0]
    if kind == "put":
        target.put(op[1], op[2])
        model[op[1]] = op[2]
    elif kind == "put_many":
        await target.put(op[1])
        model.update(op[1])
    elif kind == "delete":
        assert await target.delete(op[1]) == (op[1] in model)
        model.pop(op[1], None)
    elif kind == "delete_many":
        expected = len({k for k in op[1] if k in model})
        assert await target.delete(op[1]) == expected
        for k in op[1]:
            model.pop(k, None)
    elif kind == "get":
        assert await target.get(op[1]) == model.get(op[1])
    elif kind == "get_many":
        got = await target.get(op[1])
        assert list(got.items()) == sorted(
            (k, model[k]) for k in set(op[1]) if k in model
        )
    elif kind == "list":
        got = await target.list(**op[1])
        assert list(got.items()) == model_list(model, op[1])
    elif kind == "yield":
        await anyio.lowlevel.checkpoint()
    else:  # pragma: no cover
        raise AssertionError(kind)


async def run_program(
    make_backend: Callable[[], StorageBackend], program: list[Any]
) -> None:
    model: dict[str, Any] = {}
    backend = make_backend()
    rt = Runtime(bindings={"P": Plain}, storage=backend)
    await rt.__aenter__()
    try:
        for op in program:
            if op[0] == "restart":
                await rt.__aexit__(None, None, None)
                rt = Runtime(bindings={"P": Plain}, storage=make_backend())
                await rt.__aenter__()
                op = ("list", {})

            async def body(
                obj: Any, ctx: pyobjects.DurableObjectState, op: tuple[Any, ...] = op
            ) -> None:
                storage: Storage = ctx.storage
                if op[0] == "delete_all":
                    storage.delete_all()
                    model.clear()
                elif op[0] == "sync":
                    await storage.sync()
                elif op[0] == "event":  # several operations in one event
                    for inner_op in op[1]:
                        await apply(storage, inner_op, model)
                elif op[0] == "txn":
                    _, inner, outcome, via_storage = op
                    staged = dict(model)
                    try:
                        async with storage.transaction() as txn:
                            for inner_op in inner:
                                await apply(
                                    storage if via_storage else txn, inner_op, staged
                                )
                            if outcome == "rollback":
                                txn.rollback()
                            elif outcome == "raise":
                                raise Abort
                    except Abort:
                        pass
                    if outcome == "commit":
                        model.clear()
                        model.update(staged)
                    assert dict(await storage.list()) == model
                else:
                    await apply(storage, op, model)

            await run_in_durable_object(rt.env.P.get_by_name("model"), body)
    finally:
        await rt.__aexit__(None, None, None)


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(program=ops)
def test_memory_backend_matches_model(program: list[Any]) -> None:
    backend = MemoryBackend()  # reused across restarts: it is the "disk"
    anyio.run(run_program, lambda: backend, program)


@SETTINGS
@given(program=ops)
def test_sqlite_backend_matches_model(program: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        anyio.run(run_program, lambda: SQLiteBackend(directory), program)


@settings(max_examples=15, deadline=None)
@given(program=ops)
def test_trio_matches_model(program: list[Any]) -> None:
    backend = MemoryBackend()
    anyio.run(run_program, lambda: backend, program, backend="trio")
