"""Runtime, namespaces, stubs and RPC (reference §1-2)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import pyobjects
from pyobjects import DurableObject, DurableObjectBinding, Request, Response, Runtime


class Box(DurableObject):
    constructed = 0

    def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        type(self).constructed += 1
        self.items: list[int] = []
        self.calls: list[int] = []

    async def add(self, item: int) -> list[int]:
        self.items.append(item)
        return self.items

    def add_sync(self, item: int) -> int:
        self.items.append(item)
        return len(self.items)

    async def echo(self, value: Any) -> Any:
        return value

    async def keep(self, value: Any) -> None:
        self.kept = value

    async def kept_value(self) -> Any:
        return self.kept

    async def record(self, n: int) -> None:
        self.calls.append(n)

    async def recorded(self) -> list[int]:
        return self.calls

    async def fail(self, message: str) -> None:
        raise KeyError(message)

    async def whoami(self) -> dict[str, Any]:
        return {"id": str(self.ctx.id), "name": self.ctx.id.name}

    async def call_other(self, name: str, item: int) -> list[int]:
        other = self.env.BOX.get_by_name(name)
        return await other.add(item)  # type: ignore[no-any-return]

    async def greeting(self) -> str:
        return str(self.env.GREETING)

    async def fetch(self, request: Request) -> Response:
        body = await request.text()
        return Response.from_json(
            {
                "method": request.method,
                "url": request.url,
                "body": body,
                "x": request.headers.get("X-Test"),
            },
            status=201,
        )

    def _secret(self) -> str:
        return "hidden"

    not_callable = 42


class NoFetch(DurableObject):
    async def ping(self) -> str:
        return "pong"


@pytest.fixture
def runtime() -> Runtime:
    Box.constructed = 0
    return Runtime(bindings={"BOX": Box, "NOFETCH": NoFetch}, vars={"GREETING": "hi"})


async def test_env_access_and_calls_between_objects(runtime: Runtime) -> None:
    async with runtime as rt:
        assert rt.env.BOX is rt.env["BOX"]
        assert rt.env.GREETING == "hi"
        assert set(rt.env) == {"BOX", "NOFETCH", "GREETING"}
        with pytest.raises(AttributeError, match="no binding or var named 'NOPE'"):
            _ = rt.env.NOPE
        stub = rt.env.BOX.get_by_name("a")
        assert await stub.greeting() == "hi"
        assert await stub.call_other("b", 7) == [7]
        assert await rt.env.BOX.get_by_name("b").add(8) == [7, 8]


async def test_constructor_runs_once_and_concurrent_first_calls_share_instance(
    runtime: Runtime,
) -> None:
    async with runtime as rt:
        ns = rt.env.BOX
        results: list[list[int]] = []

        async def call(i: int) -> None:
            results.append(await ns.get(ns.id_from_name("shared")).add(i))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(call, i)
        assert Box.constructed == 1
        assert sorted(await ns.get_by_name("shared").echo(results[-1])) == list(
            range(20)
        )


async def test_results_and_arguments_are_copied_by_value(runtime: Runtime) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("copy")
        got = await stub.add(1)
        got.append(99)  # must not touch the object
        assert await stub.add(2) == [1, 2]
        arg = {"a": [1, 2]}
        await stub.keep(arg)
        arg["a"].append(3)
        assert await stub.kept_value() == {"a": [1, 2]}
        value = {"t": (1, 2), "s": {1, 2}, "n": None, "b": b"x"}
        echoed = await stub.echo(value)
        assert echoed == value
        assert echoed is not value


async def test_ids_and_stubs_pass_through_rpc_by_reference(runtime: Runtime) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("x")
        other = rt.env.BOX.get_by_name("y")
        object_id = rt.env.BOX.id_from_name("z")
        got = await stub.echo([object_id, other])
        assert got[0] is object_id
        assert got[1] is other


async def test_unserializable_argument_raises_before_delivery(runtime: Runtime) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("x")
        with pytest.raises(pyobjects.SerializationError):
            await stub.echo(object())
        assert Box.constructed == 0


async def test_sync_methods_are_awaitable(runtime: Runtime) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("sync")
        assert await stub.add_sync(5) == 1
        assert await stub.add_sync(6) == 2


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", 'does not implement the method "missing"'),
        ("_secret", "private"),
        ("not_callable", 'does not implement the method "not_callable"'),
        ("alarm", "event handler"),
        ("websocket_message", "event handler"),
    ],
)
async def test_unknown_private_and_reserved_names_raise_type_error(
    runtime: Runtime, name: str, message: str
) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("x")
        with pytest.raises(TypeError, match=message):
            await getattr(stub, name)()


async def test_dunder_attributes_are_not_rpc(runtime: Runtime) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("x")
        with pytest.raises(AttributeError):
            _ = stub.__deepcopy__


async def test_user_exception_keeps_type_and_message_and_instance_survives(
    runtime: Runtime,
) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("err")
        await stub.add(1)
        with pytest.raises(KeyError, match="boom") as info:
            await stub.fail("boom")
        notes = getattr(info.value, "__notes__", [])
        assert any(
            "Box" in note and str(stub.id) in note and "fail()" in note
            for note in notes
        )
        assert not getattr(info.value, "durable_object_reset", False)
        # Same instance, in-memory state intact, stub still usable.
        assert await stub.add(2) == [1, 2]
        assert Box.constructed == 1


async def test_calls_on_one_stub_are_delivered_in_order(runtime: Runtime) -> None:
    class Slow(DurableObject):
        def __init__(self, ctx: pyobjects.DurableObjectState, env: Any) -> None:
            super().__init__(ctx, env)
            self.seen: list[int] = []
            ctx.block_concurrency_while(self._load)

        async def _load(self) -> None:
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()

        async def record(self, n: int) -> None:
            self.seen.append(n)

        async def seen_calls(self) -> list[int]:
            return self.seen

    async with Runtime(bindings={"SLOW": Slow}) as rt:
        stub = rt.env.SLOW.get_by_name("order")
        made: list[int] = []

        async def call(n: int) -> None:
            made.append(n)  # the call is made here, with no await before it
            await stub.record(n)

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(call, n)
        assert await stub.seen_calls() == made


async def test_stub_properties_and_names(runtime: Runtime) -> None:
    async with runtime as rt:
        ns = rt.env.BOX
        named = ns.get_by_name("alice")
        assert named.name == "alice"
        assert named.id == ns.id_from_name("alice")
        assert (await named.whoami())["name"] == "alice"
        unique = ns.get(ns.new_unique_id())
        assert unique.name is None
        assert (await unique.whoami())["name"] is None
        # An id parsed from a string has no name; the object sees none either.
        parsed = ns.get(ns.id_from_string(str(ns.id_from_name("bob"))))
        assert parsed.name is None
        assert (await parsed.whoami()) == {
            "id": str(ns.id_from_name("bob")),
            "name": None,
        }


async def test_very_long_names_are_not_shown_to_the_object(runtime: Runtime) -> None:
    async with runtime as rt:
        name = "n" * 1025
        stub = rt.env.BOX.get_by_name(name)
        assert stub.name == name
        assert (await stub.whoami())["name"] is None


async def test_camel_case_aliases(runtime: Runtime) -> None:
    async with runtime as rt:
        ns = rt.env.BOX
        assert ns.idFromName("a") == ns.id_from_name("a")
        assert ns.getByName("a").id == ns.id_from_name("a")
        hex_id = str(ns.newUniqueId())
        assert ns.idFromString(hex_id) == ns.id_from_string(hex_id)


async def test_get_rejects_foreign_and_bad_ids(runtime: Runtime) -> None:
    async with runtime as rt:
        other_rt_ns = Runtime(bindings={"OTHER": Box}).env.OTHER
        foreign = other_rt_ns.id_from_name("x")
        with pytest.raises(pyobjects.InvalidIdError):
            rt.env.BOX.get(foreign)
        with pytest.raises(TypeError, match="DurableObjectId"):
            rt.env.BOX.get("abc")
        with pytest.raises(ValueError, match="location_hint"):
            rt.env.BOX.get_by_name("x", location_hint="mars")
        assert rt.env.BOX.get_by_name("x", location_hint="weur").name == "x"


async def test_jurisdictions(runtime: Runtime) -> None:
    async with runtime as rt:
        ns = rt.env.BOX
        eu = ns.jurisdiction("eu")
        assert eu.id_from_name("a") != ns.id_from_name("a")
        assert eu.id_from_name("a").jurisdiction == "eu"
        unique = ns.new_unique_id(jurisdiction="eu")
        assert unique.jurisdiction == "eu"
        assert ns.id_from_string(str(unique)).jurisdiction == "eu"
        with pytest.raises(TypeError, match="different jurisdiction"):
            eu.get(ns.id_from_name("a"))
        assert await eu.get(unique).add(1) == [1]
        assert ns.jurisdiction(None) is ns
        with pytest.raises(ValueError, match="unknown jurisdiction"):
            ns.jurisdiction("mars")


async def test_fetch_round_trip(runtime: Runtime) -> None:
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("http")
        response = await stub.fetch(
            "https://do/path?q=1",
            method="POST",
            body="hello",
            headers={"X-Test": "yes"},
        )
        assert response.status == 201
        assert response.headers["content-type"] == "application/json"
        assert await response.json() == {
            "method": "POST",
            "url": "https://do/path?q=1",
            "body": "hello",
            "x": "yes",
        }
        request = Request("https://do/", headers=[("x-test", "1")])
        assert (await (await stub.fetch(request)).json())["x"] == "1"
        with pytest.raises(ValueError, match="absolute"):
            await stub.fetch("/relative")
        with pytest.raises(TypeError, match="does not implement fetch"):
            await rt.env.NOFETCH.get_by_name("x").fetch("https://do/")


async def test_runtime_must_be_running(runtime: Runtime) -> None:
    stub = runtime.env.BOX.get_by_name("x")
    with pytest.raises(pyobjects.RuntimeClosedError, match="not running"):
        await stub.add(1)
    async with runtime:
        assert await stub.add(1) == [1]
    with pytest.raises(pyobjects.RuntimeClosedError, match="closed"):
        await stub.add(2)
    with pytest.raises(RuntimeError, match="only once"):
        async with runtime:
            pass


async def test_two_runtimes_share_nothing() -> None:
    async with Runtime(bindings={"BOX": Box}) as a, Runtime(bindings={"BOX": Box}) as b:
        await a.env.BOX.get_by_name("x").add(1)
        assert await b.env.BOX.get_by_name("x").add(2) == [2]


def test_binding_validation() -> None:
    with pytest.raises(TypeError, match="DurableObject subclass"):
        Runtime(bindings={"X": object})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="both a binding and a var"):
        Runtime(bindings={"X": Box}, vars={"X": 1})
    with pytest.raises(ValueError, match="idle_timeout"):
        Runtime(bindings={}, idle_timeout=0)


def test_unique_key_is_configurable_and_defaults_to_binding_name() -> None:
    plain = Runtime(bindings={"A": Box}).env.A
    same = Runtime(bindings={"A": Box}).env.A
    renamed = Runtime(
        bindings={"B": DurableObjectBinding(object_class=Box, unique_key="A")}
    ).env.B
    other = Runtime(bindings={"B": Box}).env.B
    assert plain.id_from_name("x") == same.id_from_name("x")
    assert renamed.id_from_name("x") == plain.id_from_name("x")
    assert other.id_from_name("x") != plain.id_from_name("x")


async def test_a_loop_of_calls_lets_other_tasks_run(runtime: Runtime) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("loop")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.lowlevel.checkpoint()
            start = ticks
            for _ in range(64 * 20):
                await stub.add_sync(1)
            tg.cancel_scope.cancel()
        assert ticks - start >= 10


async def test_serialization_errors_say_where(runtime: Runtime) -> None:
    class Bad(DurableObject):
        async def give(self) -> object:
            return {"x": object()}

    async with Runtime(bindings={"BAD": Bad}) as rt:
        with pytest.raises(pyobjects.SerializationError) as info:
            await rt.env.BAD.get_by_name("x").give()
        assert any("result of give()" in n for n in info.value.__notes__)
    async with runtime as rt:
        with pytest.raises(pyobjects.SerializationError) as info:
            await rt.env.BOX.get_by_name("x").echo(1, extra=object())
        assert any("keyword argument" in n for n in info.value.__notes__)


async def test_rpc_messages_are_limited_to_32_mib(runtime: Runtime) -> None:
    big = b"x" * (32 * 1024 * 1024 + 1)
    async with runtime as rt:
        stub = rt.env.BOX.get_by_name("big")
        with pytest.raises(
            pyobjects.MessageTooLargeError, match="limited to 32MiB"
        ) as info:
            await stub.echo(big)
        assert info.value.limit == 32 * 1024 * 1024
        assert info.value.size > info.value.limit
        with pytest.raises(pyobjects.MessageTooLargeError):
            await stub.echo(["y" * (33 * 1024 * 1024)])
        assert await stub.echo(b"x" * 1024) == b"x" * 1024

        class Huge(DurableObject):
            async def give(self) -> bytes:
                return b"z" * (33 * 1024 * 1024)

        async with Runtime(bindings={"H": Huge}) as rt2:
            with pytest.raises(pyobjects.MessageTooLargeError):
                await rt2.env.H.get_by_name("h").give()


def _nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class Deep(DurableObject):
    async def echo(self, value: object) -> object:
        return value

    async def store_nested(self, depth: int) -> str:
        storage = self.ctx.storage
        storage.put("before", 1)
        message = "accepted"
        try:
            storage.put("deep", _nested_lists(depth))
        except pyobjects.SerializationError as exc:
            message = str(exc)
        storage.put("after", 2)
        return message

    async def read(self) -> dict[str, object]:
        return await self.ctx.storage.get(["before", "deep", "after"])


async def test_deeply_nested_values_fail_fast_in_rpc_and_storage() -> None:
    # 100,000 levels: quadratic work would take minutes and gigabytes.
    deep = _nested_lists(100_000)
    async with Runtime(bindings={"DEEP": Deep}) as rt:
        stub = rt.env.DEEP.get_by_name("d")
        with pytest.raises(pyobjects.SerializationError) as info:
            await stub.echo(deep)
        assert "nested more than 1024 levels" in str(info.value)
        assert any("positional argument" in n for n in info.value.__notes__)
        message = await stub.store_nested(100_000)
        assert "nested more than 1024 levels" in message
        # Only the refused put was dropped.
        assert await stub.read() == {"before": 1, "after": 2}


@pytest.mark.parametrize("kind", ["rpc", "fetch"])
async def test_calls_that_need_no_waiting_run_inline_and_yield_now_and_then(
    runtime: Runtime, kind: str
) -> None:
    # A call that needs no waiting costs no context switch (a checkpoint
    # costs more than the call); every 64th event yields, so that a loop of
    # calls cannot starve the other tasks.
    switches = 0
    done = False

    async def other_task() -> None:
        nonlocal switches
        while not done:
            switches += 1
            await anyio.lowlevel.checkpoint()

    async with runtime, anyio.create_task_group() as tg:
        stub = runtime.env.BOX.get_by_name("inline")
        await stub.echo(0)  # started: the calls below need no waiting
        tg.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        before = switches
        for _ in range(640):
            if kind == "rpc":
                await stub.echo(1)
            else:
                await stub.fetch("https://box/")
        ran = switches - before
        done = True
    # 640 calls, 10 yields: a checkpoint per call would give 640.
    assert 5 <= ran <= 20, ran
