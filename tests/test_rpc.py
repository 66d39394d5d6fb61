"""Typed RPC at run time: ``@rpc``, ``stub.call(Cls.method, ...)``, typed env.

The static side (what mypy and pyright accept and reject) is in
``tests/typing/check_stubs.py``; this checks that the same code runs.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectNamespace,
    DurableObjectState,
    DurableObjectStub,
    Request,
    Response,
    Runtime,
    WorkerEntrypoint,
    rpc,
)
from pyobjects.testing import run_in_durable_object


class AppEnv(Protocol):
    CART: DurableObjectNamespace[Cart]
    GREETING: str


class Cart(DurableObject[AppEnv]):
    constructed = 0

    def __init__(self, ctx: DurableObjectState, env: AppEnv) -> None:
        super().__init__(ctx, env)
        type(self).constructed += 1
        self.items: dict[str, int] = {}

    @rpc
    async def add_item(self, sku: str, qty: int = 1) -> int:
        self.items[sku] = self.items.get(sku, 0) + qty
        return self.total()

    @rpc
    def total(self) -> int:
        return sum(self.items.values())

    @rpc
    async def snapshot(self) -> dict[str, int]:
        return self.items

    @rpc
    async def greeting(self) -> str:
        return self.env.GREETING

    @rpc
    async def forward(self, name: str, sku: str) -> int:
        other = self.env.CART.get_by_name(name)
        return await other.call(Cart.add_item, sku)

    async def unmarked(self) -> int:
        return 1


class BigCart(Cart):
    @rpc
    def total(self) -> int:  # an override: the stub reaches this one
        return 1000 + super().total()

    @rpc
    def discount(self) -> float:
        return 0.5


class Other(DurableObject):
    @rpc
    def total(self) -> int:
        return -1


class Caller(DurableObject):
    """An object with its own RPC method named ``call``."""

    @rpc
    async def call(self, *args: Any) -> list[Any]:
        return list(args)

    @rpc
    def name(self) -> str:  # hidden by stub.name, reached by stub.call
        return "the caller"


@pytest.fixture
async def rt() -> Any:
    bindings = {"CART": Cart, "BIG": BigCart, "OTHER": Other, "CALLER": Caller}
    async with Runtime[AppEnv](bindings=bindings, vars={"GREETING": "hi"}) as rt:
        yield rt


def test_rpc_returns_the_function_marked() -> None:
    def total(self: Any) -> int:
        return 1

    async def add(self: Any) -> int:
        return 1

    assert rpc(total) is total
    assert total.__pyobjects_rpc__ == "sync"
    assert rpc(add) is add
    assert add.__pyobjects_rpc__ == "async"
    # The class attribute is the function itself, so the object calls its
    # own methods as before.
    assert Cart.__dict__["total"].__name__ == "total"


@pytest.mark.parametrize("name", ["_load", "__secret", "alarm", "fetch", "ctx", "env"])
def test_rpc_refuses_names_no_stub_can_call(name: str) -> None:
    def method(self: Any) -> None:
        pass

    method.__name__ = method.__qualname__ = name
    with pytest.raises(TypeError, match=f"@rpc cannot mark {name}"):
        rpc(method)


def test_rpc_refuses_what_is_not_a_function() -> None:
    def helper() -> int:
        return 1

    with pytest.raises(TypeError, match="not staticmethod"):
        rpc(cast("Any", staticmethod(helper)))
    with pytest.raises(TypeError, match="not property"):
        rpc(cast("Any", property(lambda self: 1)))


async def test_call_checks_nothing_at_run_time_beyond_the_method(rt: Any) -> None:
    stub: DurableObjectStub[Cart] = rt.env.CART.get_by_name("alice")
    assert await stub.call(Cart.add_item, "apple", 2) == 2
    assert await stub.call(Cart.add_item, sku="pear") == 3
    # A sync method is awaited like an async one.
    assert await stub.call(Cart.total) == 3
    # The same object the untyped spelling reaches.
    assert await stub.total() == 3  # type: ignore[misc]


async def test_call_passes_by_value(rt: Any) -> None:
    stub: DurableObjectStub[Cart] = rt.env.CART.get_by_name("bob")
    await stub.call(Cart.add_item, "apple")
    snapshot = await stub.call(Cart.snapshot)
    snapshot["apple"] = 99
    assert await stub.call(Cart.snapshot) == {"apple": 1}


async def test_call_from_inside_an_object_with_a_typed_env(rt: Any) -> None:
    stub = rt.env.CART.get_by_name("carol")
    assert await stub.call(Cart.greeting) == "hi"
    assert await stub.call(Cart.forward, "dave", "fig") == 1
    assert await rt.env.CART.get_by_name("dave").call(Cart.total) == 1


async def test_call_refuses_a_method_not_marked_with_rpc(rt: Any) -> None:
    before = Cart.constructed
    stub = rt.env.CART.get_by_name("erin")
    with pytest.raises(TypeError, match=r"marked with @pyobjects.rpc.*Cart\.unmarked"):
        stub.call(Cart.unmarked)
    # Refused before anything was sent: the object was never constructed.
    assert Cart.constructed == before
    # The untyped spelling still reaches it.
    assert await stub.unmarked() == 1


async def test_call_refuses_a_bound_method(rt: Any) -> None:
    stub = rt.env.CART.get_by_name("erin")
    bound = Cart.__new__(Cart).total
    with pytest.raises(TypeError, match=r"like stub.call\(Cart.total, ...\)"):
        stub.call(bound)


async def test_call_refuses_a_method_of_another_class(rt: Any) -> None:
    cart = rt.env.CART.get_by_name("frank")
    with pytest.raises(TypeError, match=r"Other\.total.*not a method of Cart"):
        cart.call(Other.total)
    with pytest.raises(TypeError, match=r"BigCart\.discount.*not a method of Cart"):
        cart.call(BigCart.discount)


async def test_call_on_a_subclass_reaches_the_override(rt: Any) -> None:
    big: DurableObjectStub[BigCart] = rt.env.BIG.get_by_name("gina")
    await big.call(Cart.add_item, "apple", 5)
    # Cart.total named through the base class runs BigCart's override, as
    # big.total() would.
    assert await big.call(Cart.total) == 1005
    assert await big.call(BigCart.total) == 1005
    assert await big.call(BigCart.discount) == 0.5


async def test_an_objects_own_call_method_stays_reachable(rt: Any) -> None:
    stub = rt.env.CALLER.get_by_name("x")
    assert await stub.call(Caller.call, 1, 2) == [1, 2]
    # Untyped, with a first argument that is not a function: the method
    # named "call", as before stub.call() existed.
    assert await stub.call(1, "two") == [1, "two"]
    assert await stub.call([1], {"a": 2}) == [[1], {"a": 2}]  # unhashable too
    assert await stub.call() == []


async def test_methods_hidden_by_stub_members_are_reached_by_call(rt: Any) -> None:
    stub = rt.env.CALLER.get_by_name("x")
    assert stub.name == "x"
    assert await stub.call(Caller.name) == "the caller"


async def test_generic_types_subscript_at_run_time(rt: Any) -> None:
    # DurableObjectStub[Cart] and friends are real generic aliases, usable in
    # annotations evaluated at run time (FastAPI dependencies, pydantic).
    assert DurableObjectStub[Cart].__origin__ is DurableObjectStub  # type: ignore[attr-defined]
    assert DurableObjectNamespace[Cart].__origin__ is DurableObjectNamespace  # type: ignore[attr-defined]
    assert isinstance(rt.env.CART.get_by_name("h"), DurableObjectStub)
    assert isinstance(rt.env, pyobjects.Env)


async def test_testing_helpers_take_typed_stubs(rt: Any) -> None:
    stub: DurableObjectStub[Cart] = rt.env.CART.get_by_name("ivy")
    await stub.call(Cart.add_item, "kiwi", 4)

    async def peek(cart: Cart, ctx: DurableObjectState) -> int:
        return cart.total()

    assert await run_in_durable_object(stub, peek) == 4


class Entry(WorkerEntrypoint[AppEnv]):
    async def fetch(self, request: Request) -> Response:
        cart = self.env.CART.get_by_name("web")
        return Response(str(await cart.call(Cart.add_item, "apple", 3)))


async def test_typed_worker_entrypoint() -> None:
    from pyobjects.asgi import App

    from .asgi_driver import http, lifespan

    app = App(pyobjects.Worker(Entry, bindings={"CART": Cart}), idle_timeout=None)
    async with lifespan(app):
        result = await http(app, "GET", "/")
    assert (result.status, result.body) == (200, b"3")
