"""Registered classes through storage, RPC and WebSocket attachments (#15).

Each kind (dataclass, enum, named tuple, pydantic model, msgspec Struct)
goes through every channel on the memory and SQLite backends and comes back
equal and of the same class; stored values read back in a fresh runtime (the
next process); classes that change between runs fail clearly or migrate.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import msgspec
import pydantic
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectState,
    Response,
    Runtime,
    SerializationError,
    WebSocket,
    WebSocketPair,
)
from pyobjects._registry import BY_NAME, BY_TYPE
from pyobjects._serialization import decode_stored
from pyobjects.storage import MemoryBackend, SQLiteBackend, StorageBackend
from pyobjects.testing import ManualClock, evict, run_in_durable_object

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pyobjects.register_type(name="tests.Color")
class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@pyobjects.register_type(name="tests.Level")
class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@pyobjects.register_type(name="tests.Perm")
class Perm(enum.Flag):
    READ = 1
    WRITE = 2


@pyobjects.register_type(name="tests.Point")
class Point(NamedTuple):
    x: int
    y: int


@pyobjects.register_type(name="tests.Item")
@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    name: str
    color: Color
    at: Point
    tags: frozenset[str] = frozenset()


@pyobjects.register_type(name="tests.Address")
class Address(pydantic.BaseModel):
    city: str = pydantic.Field(alias="City")


@pyobjects.register_type(name="tests.Owner")
class Owner(pydantic.BaseModel):
    name: str
    address: Address
    since: datetime


@pyobjects.register_type(name="tests.Coupon")
class Coupon(msgspec.Struct, frozen=True):
    code: str
    percent: int = 10


@pyobjects.register_type(name="tests.Cart")
@dataclass
class Cart:
    items: list[Item]
    owner: Owner | None
    coupons: dict[Level, Coupon]
    perms: Perm
    total: Decimal = Decimal(0)
    touched: int = dataclasses.field(default=0, init=False)


ITEM = Item(name="pen", color=Color.RED, at=Point(1, 2), tags=frozenset({"a"}))
OWNER = Owner(
    name="ada",
    address=Address(City="Paris"),
    since=datetime(2024, 1, 2, tzinfo=UTC),
)


def full_cart() -> Cart:
    cart = Cart(
        items=[ITEM, dataclasses.replace(ITEM, name="ink", color=Color.GREEN)],
        owner=OWNER,
        coupons={Level.HIGH: Coupon("BIG", 20), Level.LOW: Coupon("SMALL")},
        perms=Perm.READ | Perm.WRITE,
        total=Decimal("12.50"),
    )
    cart.touched = 3
    return cart


SAMPLES = {
    "enum": Color.GREEN,
    "int-enum": Level.HIGH,
    "flag": Perm.READ | Perm.WRITE,
    "named-tuple": Point(3, 4),
    "dataclass": ITEM,
    "pydantic": OWNER,
    "msgspec": Coupon("X", 5),
    "nested": full_cart(),
    "in-plain-values": {"list": [ITEM, (Point(0, 0),)], Color.RED: {Level.LOW}},
}


def assert_same(expected: Any, got: Any) -> None:
    assert type(got) is type(expected)
    assert got == expected
    if isinstance(expected, Cart):
        assert got.touched == expected.touched  # init=False fields too
        assert type(got.coupons) is dict
        assert [type(k) for k in got.coupons] == [Level, Level]
        assert got.owner is not None
        assert type(got.owner.address) is Address


class Keeper(DurableObject):
    async def put(self, value: Any) -> None:
        await self.ctx.storage.put("v", value)

    async def get(self) -> Any:
        return await self.ctx.storage.get("v")

    async def echo(self, value: Any) -> Any:
        return value

    async def fetch(self, request: pyobjects.Request) -> Response:
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        server.serialize_attachment(await self.ctx.storage.get("v"))
        return Response(status=101, websocket=client)


@pytest.fixture(params=["memory", "sqlite"])
def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], StorageBackend]:
    """Backends on the same data: each call is the next process's view."""
    memory = MemoryBackend()
    if request.param == "memory":
        return lambda: memory
    return lambda: SQLiteBackend(tmp_path / "data")


def open_runtime(backend: StorageBackend) -> Runtime:
    return Runtime(
        bindings={"KEEP": Keeper}, storage=backend, clock=ManualClock(), vars={}
    )


@pytest.fixture
def registry() -> Iterator[None]:
    """Let a test register classes; the registry is restored afterwards."""
    by_type, by_name = dict(BY_TYPE), dict(BY_NAME)
    yield
    BY_TYPE.clear()
    BY_TYPE.update(by_type)
    BY_NAME.clear()
    BY_NAME.update(by_name)


# Round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("value", SAMPLES.values(), ids=SAMPLES.keys())
async def test_storage_round_trip_in_the_next_runtime(
    value: Any, make_backend: Callable[[], StorageBackend]
) -> None:
    async with open_runtime(make_backend()) as rt:
        stub = rt.env.KEEP.get_by_name("k")
        await stub.put(value)
        assert_same(value, await stub.get())  # the read cache's copy
    async with open_runtime(make_backend()) as rt:
        stub = rt.env.KEEP.get_by_name("k")
        assert_same(value, await stub.get())  # decoded from the backend

        async def read(obj: Keeper, ctx: DurableObjectState) -> list[Any]:
            listed = await ctx.storage.list()
            many = await ctx.storage.get(["v"])
            return [listed["v"], many["v"]]

        for got in await run_in_durable_object(stub, read):
            assert_same(value, got)


@pytest.mark.parametrize("value", SAMPLES.values(), ids=SAMPLES.keys())
async def test_rpc_round_trip(value: Any) -> None:
    async with open_runtime(MemoryBackend()) as rt:
        got = await rt.env.KEEP.get_by_name("k").echo(value)
    assert_same(value, got)
    if isinstance(value, Cart):
        assert got is not value  # passed by value
        assert got.items is not value.items


@pytest.mark.parametrize("value", SAMPLES.values(), ids=SAMPLES.keys())
async def test_attachment_round_trip_through_hibernation(
    value: Any, make_backend: Callable[[], StorageBackend]
) -> None:
    async with open_runtime(make_backend()) as rt:
        stub = rt.env.KEEP.get_by_name("k")
        await stub.put(value)
        response = await stub.fetch("https://keeper/ws")
        client = response.websocket
        assert isinstance(client, WebSocket)
        client.accept()
        await evict(stub)  # the socket hibernates with its attachment

        async def attachment(obj: Keeper, ctx: DurableObjectState) -> Any:
            (ws,) = ctx.get_websockets()
            return ws.deserialize_attachment()

        assert_same(value, await run_in_durable_object(stub, attachment))
        client.close(1000, "bye")


async def test_sync_kv_round_trip_on_sqlite(tmp_path: Path) -> None:
    cart = full_cart()
    async with open_runtime(SQLiteBackend(tmp_path)) as rt:
        stub = rt.env.KEEP.get_by_name("k")

        async def put(obj: Keeper, ctx: DurableObjectState) -> None:
            ctx.storage.kv.put("cart", cart)

        await run_in_durable_object(stub, put)
    async with open_runtime(SQLiteBackend(tmp_path)) as rt:

        async def get(obj: Keeper, ctx: DurableObjectState) -> Any:
            return ctx.storage.kv.get("cart")

        assert_same(
            cart, await run_in_durable_object(rt.env.KEEP.get_by_name("k"), get)
        )


# Refusals -------------------------------------------------------------------------


@dataclass
class Unregistered:
    n: int


async def test_an_unregistered_class_is_refused_everywhere() -> None:
    message = (
        "Cannot serialize 'tests.test_typed_values.Unregistered' value at "
        "{where}: tests.test_typed_values.Unregistered is not registered: "
        "register it with @pyobjects.register_type to get it back as itself"
    )
    bad = Cart(items=[Unregistered(1)], owner=None, coupons={}, perms=Perm(0))  # type: ignore[list-item]
    async with open_runtime(MemoryBackend()) as rt:
        stub = rt.env.KEEP.get_by_name("k")

        async def store(obj: Keeper, ctx: DurableObjectState) -> None:
            with pytest.raises(SerializationError) as info:
                ctx.storage.put("v", bad)
            assert str(info.value) == message.format(where=".items[0]")
            _, server = WebSocketPair()
            with pytest.raises(SerializationError) as info:
                server.serialize_attachment({"a": bad})
            assert str(info.value) == message.format(where="['a'].items[0]")
            assert server.deserialize_attachment() is None

        await run_in_durable_object(stub, store)
        assert await stub.get() is None  # nothing was written
        with pytest.raises(SerializationError) as info:
            await stub.echo(bad)
        assert str(info.value) == message.format(where="[0][0].items[0]")


async def test_a_value_of_an_unknown_name_fails_on_read(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    @pyobjects.register_type(name="shop.Gone")
    @dataclass
    class Gone:
        n: int

    async with open_runtime(make_backend()) as rt:
        await rt.env.KEEP.get_by_name("k").put(Gone(1))
    del BY_NAME["shop.Gone"], BY_TYPE[Gone]  # the next process lacks the class
    async with open_runtime(make_backend()) as rt:
        with pytest.raises(SerializationError) as info:
            await rt.env.KEEP.get_by_name("k").get()
    assert str(info.value) == (
        "Cannot deserialize a value of registered type 'shop.Gone': no class is "
        "registered under that name in this process; import the module that "
        "registers it, or, if the class was renamed or moved, register it with "
        "pyobjects.register_type(cls, name='shop.Gone')"
    )


# Versions ----------------------------------------------------------------------


def forget(name: str) -> None:
    """Drop *name* from the registry, as a new process would not know it."""
    registration = BY_NAME.pop(name)
    del BY_TYPE[registration.cls]


async def store_v1(backend: StorageBackend) -> None:
    @pyobjects.register_type(name="shop.Line")
    @dataclass
    class Line:
        sku: str
        qty: int

    async with open_runtime(backend) as rt:
        await rt.env.KEEP.get_by_name("k").put([Line("a", 2), Line("b", 1)])
    forget("shop.Line")


async def read_back(backend: StorageBackend) -> Any:
    async with open_runtime(backend) as rt:
        return await rt.env.KEEP.get_by_name("k").get()


async def test_a_migrate_hook_upgrades_old_values(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    await store_v1(make_backend())
    calls = []

    def migrate(version: int, state: dict[str, Any]) -> dict[str, Any]:
        calls.append((version, dict(state)))
        return {"sku": state["sku"], "quantity": state["qty"], "gift": False}

    @pyobjects.register_type(name="shop.Line", version=2, migrate=migrate)
    @dataclass
    class Line:
        sku: str
        quantity: int
        gift: bool

    assert await read_back(make_backend()) == [Line("a", 2, False), Line("b", 1, False)]
    assert calls == [(1, {"sku": "a", "qty": 2}), (1, {"sku": "b", "qty": 1})]


async def test_an_old_version_without_migrate_fails_clearly(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    await store_v1(make_backend())

    @pyobjects.register_type(name="shop.Line", version=2)
    @dataclass
    class Line:
        sku: str
        quantity: int

    with pytest.raises(SerializationError) as info:
        await read_back(make_backend())
    assert str(info.value) == (
        "Cannot deserialize a 'shop.Line' value of version 1: "
        "tests.test_typed_values.test_an_old_version_without_migrate_fails_clearly."
        "<locals>.Line is registered as version 2 without a migrate function; "
        "pass migrate=fn to register_type to upgrade stored values"
    )


async def test_a_newer_version_fails_clearly(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    @pyobjects.register_type(name="shop.Tier", version=3)
    class Tier(enum.Enum):
        GOLD = 1

    async with open_runtime(make_backend()) as rt:
        await rt.env.KEEP.get_by_name("k").put(Tier.GOLD)
    forget("shop.Tier")

    @pyobjects.register_type(name="shop.Tier", version=2)
    class Tier2(enum.Enum):
        GOLD = 1

    with pytest.raises(
        SerializationError, match=r"written by newer code, and .*Tier2 "
    ):
        await read_back(make_backend())


async def test_a_changed_class_without_a_new_version_fails_clearly(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    await store_v1(make_backend())

    @pyobjects.register_type(name="shop.Line")
    @dataclass
    class Line:
        sku: str
        quantity: int  # renamed from qty, version not raised

    with pytest.raises(SerializationError) as info:
        await read_back(make_backend())
    message = str(info.value)
    assert message.startswith("Cannot deserialize a 'shop.Line' value of version 1 ")
    assert "TypeError: 'qty' is not a field of " in message
    assert message.endswith(
        "; if the class changed, raise its version and pass a migrate function "
        "to register_type"
    )
    assert isinstance(info.value.__cause__, TypeError)


async def test_a_failing_migrate_hook_is_reported_with_its_error(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    await store_v1(make_backend())

    def migrate(version: int, state: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("sku_code")

    @pyobjects.register_type(name="shop.Line", version=2, migrate=migrate)
    @dataclass
    class Line:
        sku_code: str

    with pytest.raises(SerializationError) as info:
        await read_back(make_backend())
    assert str(info.value) == (
        "Cannot deserialize a 'shop.Line' value of version 1: migrating it to "
        "version 2 failed: KeyError: 'sku_code'"
    )
    assert isinstance(info.value.__cause__, KeyError)


async def test_a_moved_class_reads_old_values_under_its_old_name(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    await store_v1(make_backend())

    @dataclass
    class OrderLine:  # renamed and moved; registered under the stored name
        sku: str
        qty: int

    pyobjects.register_type(OrderLine, name="shop.Line")
    assert await read_back(make_backend()) == [OrderLine("a", 2), OrderLine("b", 1)]


async def test_a_migrate_hook_maps_removed_enum_members(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    @pyobjects.register_type(name="shop.Size")
    class Size(enum.Enum):
        S = "s"
        XL = "xl"

    async with open_runtime(make_backend()) as rt:
        await rt.env.KEEP.get_by_name("k").put(Size.XL)
    forget("shop.Size")

    def migrate(version: int, value: str) -> str:
        return {"xl": "l"}.get(value, value)

    @pyobjects.register_type(name="shop.Size", version=2, migrate=migrate)
    class Size2(enum.Enum):
        S = "s"
        L = "l"

    assert await read_back(make_backend()) is Size2.L


async def test_a_removed_enum_member_fails_clearly(
    registry: None, make_backend: Callable[[], StorageBackend]
) -> None:
    @pyobjects.register_type(name="shop.Size")
    class Size(enum.Enum):
        XL = "xl"

    async with open_runtime(make_backend()) as rt:
        await rt.env.KEEP.get_by_name("k").put({"size": Size.XL})
    forget("shop.Size")

    @pyobjects.register_type(name="shop.Size")
    class Size2(enum.Enum):
        L = "l"

    with pytest.raises(SerializationError, match=r"ValueError: 'xl' is not a valid"):
        await read_back(make_backend())


# Inspection ----------------------------------------------------------------------


def test_inspect_shows_registered_values_as_stored(
    registry: None, tmp_path: Path
) -> None:
    from click.testing import CliRunner  # the server extra

    from pyobjects._cli_commands import cli

    anyio.run(store_v1, SQLiteBackend(tmp_path))  # the inspector lacks the class
    storage = str(tmp_path)
    shown = CliRunner().invoke(cli, ["inspect", "--storage", storage, "KEEP", "k"])
    assert shown.exit_code == 0, shown.output
    assert (
        "'v': [<shop.Line v1: {'sku': 'a', 'qty': 2}>, "
        "<shop.Line v1: {'sku': 'b', 'qty': 1}>]"
    ) in shown.output
    as_json = CliRunner().invoke(
        cli, ["inspect", "--storage", storage, "--json", "KEEP", "k"]
    )
    document = json.loads(as_json.output)
    assert document["data"] == [
        {
            "key": "v",
            "value": [
                {"$type": "shop.Line", "$version": 1, "$state": {"sku": s, "qty": q}}
                for s, q in (("a", 2), ("b", 1))
            ],
        }
    ]


def test_the_inspector_refuses_malformed_registered_values() -> None:
    from pyobjects._inspect import StoredType

    with pytest.raises(ValueError, match="malformed value of registered type 'x'"):
        decode_stored(bytes.fromhex("92c701097801"), StoredType)  # [ext 9 "x", 1]
    assert decode_stored(bytes.fromhex("93c701097801c0"), StoredType) == StoredType(
        "x", 1, None
    )
