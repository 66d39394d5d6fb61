"""Typed stubs and a typed env, checked by mypy --strict and pyright strict.

Never run by pytest. Every line that must be a type error carries both
checkers' suppressions: ``# type: ignore[code]`` for mypy and
``# pyright: ignore[rule]`` for pyright (which is told to ignore the former).
Both checkers report a suppression that suppresses nothing (mypy's
``warn_unused_ignores``, pyright's ``reportUnnecessaryTypeIgnoreComment``), so
each of these lines proves that the error is there, with that code.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol, assert_type

import pyobjects
from pyobjects import (
    AlarmInfo,
    AsyncRpcMethod,
    DurableObject,
    DurableObjectNamespace,
    DurableObjectState,
    DurableObjectStub,
    Request,
    Response,
    RpcMethod,
    Runtime,
    WorkerEntrypoint,
    rpc,
)
from pyobjects.testing import run_in_durable_object


class AppEnv(Protocol):
    """The bindings and vars of the app, declared once."""

    CART: DurableObjectNamespace[Cart]
    AUDIT: DurableObjectNamespace[Audit]
    GREETING: str


class Cart(DurableObject[AppEnv]):
    LIMIT = 10

    @rpc
    async def add_item(self, sku: str, qty: int = 1) -> int:
        assert_type(self.env, AppEnv)
        assert_type(self.env.CART, DurableObjectNamespace[Cart])
        assert_type(self.env.GREETING, str)
        audit = self.env.AUDIT.get_by_name("log")
        assert_type(audit, DurableObjectStub[Audit])
        await audit.call(Audit.record, f"{sku} x{qty}")
        # Inside the object its methods are plain methods: sync stays sync.
        assert_type(self.total(), int)
        return self.total() + qty

    @rpc
    def total(self) -> int:
        return 0

    @rpc
    async def items(self) -> dict[str, int]:
        return {}

    async def untyped_helper(self, n: int) -> int:  # not marked with @rpc
        return n

    def _load(self) -> None:
        pass

    async def alarm(self, alarm_info: AlarmInfo) -> None:
        pass

    async def fetch(self, request: Request) -> Response:
        return Response("cart")


class Audit(DurableObject[AppEnv]):
    @rpc
    def record(self, line: str) -> None:
        pass


class BigCart(Cart):
    @rpc
    def discount(self) -> float:
        return 0.5


async def typed_calls(stub: DurableObjectStub[Cart]) -> None:
    # Arguments are checked against Cart.add_item; the result is its return.
    assert_type(await stub.call(Cart.add_item, "apple", 2), int)
    assert_type(await stub.call(Cart.add_item, "apple"), int)
    assert_type(await stub.call(Cart.add_item, sku="apple", qty=3), int)
    assert_type(await stub.call(Cart.items), dict[str, int])
    # A sync method is awaitable through the stub, and typed so.
    assert_type(await stub.call(Cart.total), int)
    assert_type(await assert_type(stub.call(Cart.total), Coroutine[Any, Any, int]), int)
    # The stub's own members.
    assert_type(stub.id, pyobjects.DurableObjectId)
    assert_type(stub.name, str | None)
    assert_type(await stub.fetch("https://cart/"), Response)
    # The method references themselves.
    assert_type(Cart.total, RpcMethod[Cart, [], int])
    assert_type(Cart.items, AsyncRpcMethod[Cart, [], dict[str, int]])


async def wrong_arguments(stub: DurableObjectStub[Cart]) -> None:
    await stub.call(Cart.add_item, 2, "two")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await stub.call(Cart.add_item, "apple", qty="2")  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await stub.call(Cart.add_item)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    await stub.call(Cart.total, 1)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    await stub.call(Cart.add_item, "apple", colour="red")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]


async def missing_methods(stub: DurableObjectStub[Cart]) -> None:
    await stub.call(Cart.remove_item, "apple")  # type: ignore[attr-defined, call-overload]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownArgumentType]
    # A typed stub has no unchecked path: the dynamic spelling is an error.
    await stub.add_item("apple", 2)  # type: ignore[misc]  # pyright: ignore[reportCallIssue]
    await stub.remove_item("apple")  # type: ignore[misc]  # pyright: ignore[reportCallIssue]


async def wrong_use_of_results(stub: DurableObjectStub[Cart]) -> None:
    total = await stub.call(Cart.total)
    label: str = total  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    (await stub.call(Cart.items)).append(1)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    n: int = stub.call(Cart.total)  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del label, n


async def not_callable_through_a_stub(stub: DurableObjectStub[Cart]) -> None:
    # Private names: not @rpc methods (and @rpc refuses them at run time).
    await stub.call(Cart._load)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType, reportPrivateUsage]
    await stub._load()  # type: ignore[misc]  # pyright: ignore[reportCallIssue]
    # ctx, env and the event handlers.
    await stub.call(Cart.ctx)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await stub.call(Cart.env)  # type: ignore[misc, call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await stub.ctx.storage.get("k")  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    await stub.call(Cart.alarm, AlarmInfo(retry_count=0, is_retry=False))  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await stub.alarm(AlarmInfo(retry_count=0, is_retry=False))  # type: ignore[misc]  # pyright: ignore[reportCallIssue]
    await stub.call(Cart.fetch, Request("https://cart/"))  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    # Methods not marked with @rpc and class attributes.
    await stub.call(Cart.untyped_helper, 1)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await stub.call(Cart.LIMIT)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]


async def other_classes(
    cart: DurableObjectStub[Cart], big: DurableObjectStub[BigCart]
) -> None:
    # A subclass's stub takes the base class's methods...
    assert_type(await big.call(Cart.total), int)
    assert_type(await big.call(BigCart.total), int)
    assert_type(await big.call(BigCart.discount), float)
    # ...but a method of another class, or of a subclass, is an error.
    await cart.call(BigCart.discount)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await cart.call(Audit.record, "line")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    wrong: DurableObjectStub[Audit] = cart  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del wrong


def namespaces(ns: DurableObjectNamespace[Cart]) -> None:
    assert_type(ns.get(ns.id_from_name("a")), DurableObjectStub[Cart])
    assert_type(ns.get_by_name("a"), DurableObjectStub[Cart])
    assert_type(ns.jurisdiction("eu").get_by_name("a"), DurableObjectStub[Cart])
    assert_type(ns.object_class, type[Cart])


async def typed_runtime() -> None:
    async with Runtime[AppEnv](
        bindings={"CART": Cart, "AUDIT": Audit}, vars={"GREETING": "hi"}
    ) as rt:
        assert_type(rt.env.CART, DurableObjectNamespace[Cart])
        stub = rt.env.CART.get_by_name("alice")
        assert_type(await stub.call(Cart.add_item, "apple", 2), int)
        _ = rt.env.MISSING  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownVariableType]

        async def peek(cart: Cart, ctx: DurableObjectState) -> int:
            return cart.total()

        # The testing helpers take typed stubs.
        assert_type(await run_in_durable_object(stub, peek), int)


class Entry(WorkerEntrypoint[AppEnv]):
    async def fetch(self, request: Request) -> Response:
        assert_type(self.env.CART, DurableObjectNamespace[Cart])
        total = await self.env.CART.get_by_name("alice").call(Cart.total)
        return Response(str(total))


async def fetch_function(request: Request, env: AppEnv) -> Response:
    assert_type(await env.CART.get_by_name("a").call(Cart.items), dict[str, int])
    return Response("ok")


workers = (
    pyobjects.Worker(Entry, bindings={"CART": Cart, "AUDIT": Audit}),
    pyobjects.Worker(fetch_function, bindings={"CART": Cart, "AUDIT": Audit}),
)


async def untyped_usage_keeps_working(
    env: pyobjects.Env,
    bare_ns: DurableObjectNamespace,
    any_stub: DurableObjectStub[Any],
) -> None:
    # env.X is Any: stubs from it are untyped, anything goes, as before.
    stub = env.CART.get_by_name("alice")
    await stub.add_item("apple", 2)
    await stub.anything(1, 2, three=3)
    # A bare namespace gives a bare stub, which also calls anything.
    bare = bare_ns.get_by_name("alice")
    assert_type(bare, DurableObjectStub[DurableObject[Any]])
    assert_type(await bare.add_item("apple", 2), Any)
    assert_type(await bare.call(Cart.add_item, "apple", 2), Any)
    # A stub of Any is checked where it can be and free elsewhere.
    assert_type(await any_stub.whatever(), Any)
    assert_type(await any_stub.call(Cart.total), int)

    # Untyped objects and workers.
    class Plain(DurableObject):
        async def hello(self) -> str:
            assert_type(self.env, Any)
            return "hi"

    class PlainEntry(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            assert_type(self.env, pyobjects.Env)
            return Response("ok")

    pyobjects.Worker(PlainEntry, bindings={"PLAIN": Plain})
    async with Runtime(bindings={"PLAIN": Plain}) as rt:
        assert_type(rt.env, pyobjects.Env)
        assert_type(await rt.env.PLAIN.get_by_name("x").hello(), Any)
