from __future__ import annotations

import enum
import math
import struct
import tracemalloc
import zoneinfo
from collections import OrderedDict, defaultdict, namedtuple
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from pyobjects._errors import SerializationError
from pyobjects._ids import DurableObjectId, IdFactory
from pyobjects._serialization import (
    MAX_VALUE_BYTES,
    _locate,
    copy_args,
    copy_value,
    decode,
    encode,
)

PARIS = ZoneInfo("Europe/Paris")


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """Assert *b* equals *a* with the same exact types all the way down."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if type(a) is float:
        # Bitwise: keeps -0.0 apart from 0.0 and compares nan payloads.
        assert struct.pack(">d", a) == struct.pack(">d", b), path
    elif type(a) is Decimal:
        assert a.compare_total(b) == 0, f"{path}: {a!r} != {b!r}"
    elif type(a) is datetime:
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), path
        assert a.fold == b.fold, path
        assert type(a.tzinfo) is type(b.tzinfo), path
        assert repr(a.tzinfo) == repr(b.tzinfo), path
    elif type(a) in (list, tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif type(a) is dict:
        assert len(a) == len(b), path
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_same(ka, kb, f"{path} key {ka!r}")
            assert_same(va, vb, f"{path}[{ka!r}]")
    elif type(a) in (set, frozenset):
        assert len(a) == len(b), path
        members = {y: y for y in b}
        for x in a:
            assert_same(x, members[x], f"{path} item {x!r}")
    else:
        assert a == b, path


def roundtrip(value: Any) -> Any:
    data = encode(value)
    assert type(data) is bytes
    decoded = decode(data)
    assert_same(value, decoded)
    return decoded


SCALARS = [
    None,
    True,
    False,
    0,
    1,
    -1,
    127,
    -33,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    2**100,
    -(2**100),
    10**400,
    0.0,
    -0.0,
    1.5,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "hello",
    "é🙂\x00",
    b"",
    b"\x00\xff",
    date(1, 1, 1),
    date(9999, 12, 31),
    datetime(2024, 2, 29, 23, 59, 59, 999999),
    datetime(1, 1, 1),
    datetime(2024, 1, 1, tzinfo=UTC),
    datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(2024, 1, 1, tzinfo=timezone(timedelta(microseconds=-1), "odd")),
    datetime(2024, 1, 1, tzinfo=timezone(timedelta(0), "")),
    datetime(2024, 7, 1, 12, 30, tzinfo=PARIS),
    datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=0),
    datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1),
    datetime(2024, 10, 27, 2, 30, fold=1),
    Decimal(0),
    Decimal("-0"),
    Decimal("1E+3"),
    Decimal(1000),
    Decimal("1.500"),
    Decimal("-123.456e-789"),
    Decimal("NaN"),
    Decimal("-NaN123"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    UUID(int=0),
    uuid4(),
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalar_roundtrip(value: Any) -> None:
    roundtrip(value)


def test_nan_and_negative_zero() -> None:
    assert math.isnan(roundtrip(math.nan))
    assert math.copysign(1.0, roundtrip(-0.0)) == -1.0
    assert roundtrip(Decimal("NaN")).is_nan()
    assert roundtrip(Decimal("-0")).is_signed()
    assert str(roundtrip(Decimal("1E+3"))) == "1E+3"


def test_big_ints() -> None:
    for n in (2**64, -(2**64), 2**100, -(2**100), 2**1000 + 1):
        assert roundtrip(n) == n


def test_timezones() -> None:
    utc = roundtrip(datetime(2024, 1, 1, tzinfo=UTC))
    assert utc.tzinfo is UTC
    named = roundtrip(datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2), "X")))
    assert named.tzname() == "X"
    unnamed = roundtrip(datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    assert unnamed.tzname() == "UTC+02:00"
    later = roundtrip(datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1))
    assert later.tzinfo is PARIS
    assert later.fold == 1
    assert later.utcoffset() == timedelta(hours=1)


def test_containers() -> None:
    value = {
        "list": [1, "a", None, [2, [3]]],
        "tuple": (1, (2, (3,)), [4]),
        "set": {1, "a", (2, 3), frozenset({4})},
        "frozenset": frozenset({1, (2,), frozenset({3})}),
        "dict": {"nested": {"deeper": {"x": [1.5]}}},
        "empty": [[], (), {}, set(), frozenset(), "", b""],
        "every": SCALARS,
        "as_tuple": tuple(SCALARS),
    }
    roundtrip(value)


def test_dict_keys_of_any_supported_type() -> None:
    value = {
        "s": 1,
        2: "int",
        -(2**80): "big",
        1.5: "float",
        None: "none",
        True: "bool",
        b"k": "bytes",
        (1, "a", (2,)): "tuple",
        frozenset({1, 2}): "frozenset",
        date(2020, 1, 1): "date",
        datetime(2020, 1, 1, tzinfo=PARIS): "datetime",
        Decimal("1.10"): "decimal",
        UUID(int=7): "uuid",
    }
    decoded = roundtrip(value)
    assert list(decoded) == list(value)  # insertion order kept


def test_mixed_bool_int_float_keep_types() -> None:
    decoded = roundtrip([True, 1, 1.0, Decimal(1), {1: True}, (False, 0)])
    assert [type(x) for x in decoded[:4]] == [bool, int, float, Decimal]


def test_decode_gives_fresh_copies() -> None:
    value = {"a": [1, {2}], "b": {"c": []}}
    data = encode(value)
    first, second = decode(data), decode(data)
    assert first is not value
    assert first["a"] is not value["a"]
    first["a"].append(3)
    first["a"][1].add(4)
    first["b"]["c"].append(5)
    assert second == value
    assert value == {"a": [1, {2}], "b": {"c": []}}


def test_max_value_bytes() -> None:
    assert MAX_VALUE_BYTES == 131_072


# The on-disk format: stored values must stay readable, so these bytes are fixed.
GOLDEN = [
    ((1, "a"), "93c7000101a161"),
    ({1}, "92c7000201"),
    (frozenset({"x"}), "92c70003a178"),
    (2**64, "c70904010000000000000000"),
    (-(2**63) - 1, "c70904ff7fffffffffffffff"),
    (datetime(2024, 3, 31, 2, 30, 15, 123456), "c70c0507e8031f021e0f0001e24000"),
    (
        datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "c7150507e801020304050000000600010000000000000000",
    ),
    (
        datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
        "c7190507e80a1b021e000000000001034575726f70652f5061726973",
    ),
    (
        datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30), "IST")),
        "c7180507d00101000000000000000002000000049c2c0600495354",
    ),
    (date(1999, 12, 31), "d60607cf0c1f"),
    (Decimal("-1.50E+3"), "d7072d312e3530452b33"),
    (UUID(int=1), "d80800000000000000000000000000000001"),
]


@pytest.mark.parametrize(("value", "golden"), GOLDEN, ids=repr)
def test_format_is_stable(value: Any, golden: str) -> None:
    assert encode(value).hex() == golden
    assert_same(value, decode(bytes.fromhex(golden)))


# Refused values -------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Mood(enum.StrEnum):
    HAPPY = "happy"


Point = namedtuple("Point", "x y")  # noqa: PYI024


class Text(str):
    __slots__ = ()


@pytest.mark.parametrize(
    ("value", "type_name", "base", "hint"),
    [
        (OrderedDict(a=1), "collections.OrderedDict", "dict", "dict(x)"),
        (defaultdict(list), "collections.defaultdict", "dict", "dict(x)"),
        (Text("x"), "tests.test_serialization.Text", "str", "str(x)"),
    ],
)
def test_subclasses_refused(value: Any, type_name: str, base: str, hint: str) -> None:
    with pytest.raises(SerializationError) as info:
        encode(value)
    assert str(info.value) == (
        f"Cannot serialize {type_name!r} value: it is a subclass of {base}, "
        f"which would come back as a plain {base}; convert it first, e.g. {hint}"
    )
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("value", "type_name", "hint"),
    [
        (Color.RED, "tests.test_serialization.Color", "x.value"),
        (Mood.HAPPY, "tests.test_serialization.Mood", "x.value"),
        (Point(1, 2), "tests.test_serialization.Point", "tuple(x)"),
    ],
)
def test_registrable_subclasses_refused(value: Any, type_name: str, hint: str) -> None:
    with pytest.raises(SerializationError) as info:
        encode(value)
    assert str(info.value) == (
        f"Cannot serialize {type_name!r} value: {type_name} is not registered: "
        "register it with @pyobjects.register_type to get it back as itself, "
        f"or convert it first, e.g. {hint}"
    )


def test_subclass_location_is_named() -> None:
    with pytest.raises(SerializationError, match=r"value at \['a'\]\[1\]: tests\."):
        encode({"a": [0, Color.RED]})


def test_subclass_of_datetime_refused() -> None:
    class Moment(datetime):
        pass

    class Day(date):
        pass

    with pytest.raises(SerializationError, match=r"subclass of datetime\.datetime"):
        encode(Moment(2024, 1, 1))
    with pytest.raises(SerializationError, match=r"subclass of datetime\.date,"):
        encode(Day(2024, 1, 1))
    # The suggested conversions give exact types that round trip.
    moment = Moment(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1)
    roundtrip(datetime.combine(moment.date(), moment.timetz()))
    day = Day(2024, 1, 1)
    roundtrip(date(day.year, day.month, day.day))


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (1j, ""),
        (object(), ""),
        (print, ""),
        (int, ""),
        ({"a": [1, 2, 1j]}, " at ['a'][2]"),
        ({1j: 1}, " at <key #0>"),
        ([{1, 2}, (0, frozenset({1j}))], " at [1][1]<item #0>"),
    ],
    ids=repr,
)
def test_unsupported_types(value: Any, where: str) -> None:
    with pytest.raises(SerializationError) as info:
        encode(value)
    message = str(info.value)
    assert message.startswith("Cannot serialize ")
    assert f"value{where}: supported types are None, bool, int" in message


def test_unsupported_tzinfo() -> None:
    class Fixed(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            return timedelta(0)

        def dst(self, dt: datetime | None) -> timedelta:
            return timedelta(0)

        def tzname(self, dt: datetime | None) -> str:
            return "fixed"

    with pytest.raises(SerializationError, match=r"its tzinfo is .*Fixed; only"):
        encode([datetime(2024, 1, 1, tzinfo=Fixed())])


def test_zoneinfo_subclass_refused() -> None:
    class Zone(ZoneInfo):
        pass

    with pytest.raises(SerializationError, match=r"its tzinfo is .*Zone; only"):
        encode(datetime(2024, 1, 1, tzinfo=Zone("Europe/Paris")))


def test_zoneinfo_without_key_refused() -> None:
    files = [Path(root, "Europe", "Paris") for root in zoneinfo.TZPATH]
    found = [path for path in files if path.is_file()]
    if not found:
        pytest.skip("no system time zone database")
    with found[0].open("rb") as file:
        zone = ZoneInfo.from_file(file)
    with pytest.raises(SerializationError, match="made from a key"):
        encode(datetime(2024, 1, 1, tzinfo=zone))


def test_lone_surrogate_refused() -> None:
    with pytest.raises(SerializationError, match=r"value at \[1\]\['k'\]: .*surrogate"):
        encode(["ok", {"k": "\udc00"}])


def test_bytearray_comes_back_as_bytes() -> None:
    # Known gap: msgpack packs buffers natively, before the codec sees them.
    assert decode(encode(bytearray(b"ab"))) == b"ab"
    assert type(decode(encode(memoryview(b"ab")))) is bytes


def test_self_referencing_list() -> None:
    value: list[Any] = [1]
    value.append(value)
    with pytest.raises(SerializationError, match=r"contains itself \(at \[1\]\)"):
        encode(value)


def test_cycles_through_dict_and_tuple() -> None:
    inner: dict[str, Any] = {}
    inner["me"] = (inner,)
    with pytest.raises(SerializationError, match="contains itself"):
        encode({"x": [inner]})


def test_shared_reference_is_not_a_cycle() -> None:
    shared = [1]
    assert decode(encode([shared, shared, (shared,)])) == [[1], [1], ([1],)]


def nested(kind: type, depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"k": value} if kind is dict else kind([value])
    return value


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_depth_limit(kind: type) -> None:
    # Everything the encoder accepts must decode: msgpack's limits agree.
    decode(encode(nested(kind, 1024)))
    with pytest.raises(SerializationError, match="nested more than 1024 levels"):
        encode(nested(kind, 1025))


DEEP = 100_000
# Far more than the search for a cycle or a path needs (a few MB): a search
# that spelled out a path per level would need gigabytes at DEEP levels.
PEAK_BYTES = 32 * 1024 * 1024


def _peak_while(fn: Any, *args: Any) -> tuple[BaseException, int]:
    """Run fn(*args), which must raise; return the error and the peak memory."""
    tracemalloc.start()
    try:
        fn(*args)
    except Exception as exc:  # the caller checks what it is
        error = exc
    else:  # pragma: no cover - the test fails below
        error = AssertionError(f"{fn.__name__} did not raise")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("kind", [list, tuple, dict])
@pytest.mark.parametrize("codec", [encode, copy_value])
def test_a_very_deep_value_fails_in_linear_memory(kind: type, codec: Any) -> None:
    value = nested(kind, DEEP)  # built iteratively, before the measurement
    error, peak = _peak_while(codec, value)
    assert isinstance(error, SerializationError)
    assert "nested more than 1024 levels" in str(error)
    assert peak < PEAK_BYTES


def test_a_cycle_beside_a_very_deep_value_is_named() -> None:
    loop: list[Any] = []
    loop.append(loop)
    error, peak = _peak_while(encode, [nested(list, DEEP), {"x": loop}])
    assert isinstance(error, SerializationError)
    assert "contains itself (at [1]['x'][0])" in str(error)
    assert peak < PEAK_BYTES


def test_a_cycle_below_the_depth_limit_is_reported_as_too_deep() -> None:
    # The packer stops at 1024 levels; what lies below is too deep anyway.
    loop: list[Any] = []
    loop.append(loop)
    value: Any = loop
    for _ in range(DEEP):
        value = [value]
    error, peak = _peak_while(encode, value)
    assert isinstance(error, SerializationError)
    assert "nested more than 1024 levels" in str(error)
    assert peak < PEAK_BYTES


def test_an_unsupported_item_beside_a_very_deep_value_is_located() -> None:
    error, peak = _peak_while(
        encode, [nested(list, 1000), [object()], nested(list, DEEP)]
    )
    assert isinstance(error, SerializationError)
    assert "'object' value at [1][0]" in str(error)
    assert peak < PEAK_BYTES


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb(msgpack.ExtType(99, b"")),
        msgpack.packb(msgpack.ExtType(64, b"\x00\x00\x00\x00")),  # a copy-only ref
        msgpack.packb(msgpack.ExtType(5, b"\x07")),  # truncated datetime
        msgpack.packb(msgpack.ExtType(5, bytes(12) + b"\x09" + bytes(8))),  # tz kind
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # trailing data
    ],
)
def test_decode_rejects_malformed_data(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        decode(data)


# Copies -----------------------------------------------------------------------

IDS = IdFactory("worker-Thing")


def test_copy_value_scalars_pass_as_is() -> None:
    for value in (None, True, 1, 2**100, 1.5, math.nan, "ascii", b"bytes"):
        assert copy_value(value) is value


def test_copy_value_non_ascii_str() -> None:
    assert copy_value("é🙂") == "é🙂"
    with pytest.raises(SerializationError, match="surrogate"):
        copy_value("\ud800")


def test_copy_value_is_deep_and_fresh() -> None:
    value = {"a": [1, {"b": {2}}], "t": (1, [2])}
    copied = copy_value(value)
    assert_same(value, copied)
    copied["a"][1]["b"].add(3)
    copied["t"][1].append(3)
    assert value == {"a": [1, {"b": {2}}], "t": (1, [2])}


def test_copy_value_refuses_like_encode() -> None:
    with pytest.raises(SerializationError, match="OrderedDict"):
        copy_value([OrderedDict()])
    handle = IDS.from_name("x")
    with pytest.raises(SerializationError, match="DurableObjectId"):
        copy_value([handle])


def test_copy_value_passthrough_keeps_identity() -> None:
    first, second = IDS.from_name("a"), IDS.new_unique()
    value = {"ids": [first, (second, first)], first: {second}, "n": 1}
    copied = copy_value(value, (DurableObjectId,))
    assert copied is not value
    assert copied["ids"][0] is first
    assert copied["ids"][1][0] is second
    assert copied["ids"][1][1] is first
    key = next(iter(copied.keys() - {"ids", "n"}))
    assert key is first
    assert next(iter(copied[first])) is second
    assert copy_value(first, (DurableObjectId,)) is first


def test_copy_args_fast_path() -> None:
    args = (1, "x", None, 2.5, b"y", True)
    copied_args, copied_kwargs = copy_args(args, {})
    assert copied_args is args
    assert copied_kwargs == {}


def test_copy_args_copies_containers() -> None:
    items = [1, [2]]
    options = {"flag": {"deep": [3]}}
    copied_args, copied_kwargs = copy_args((items, "é"), {"options": options})
    assert_same((items, "é"), copied_args)
    assert_same({"options": options}, copied_kwargs)
    copied_args[0][1].append(9)
    copied_kwargs["options"]["flag"]["deep"].append(9)
    assert items == [1, [2]]
    assert options == {"flag": {"deep": [3]}}


def test_copy_args_passthrough() -> None:
    handle = IDS.from_name("h")
    copied_args, copied_kwargs = copy_args(
        (handle, [handle]), {"to": handle}, (DurableObjectId,)
    )
    assert copied_args[0] is handle
    assert copied_args[1][0] is handle
    assert copied_kwargs["to"] is handle
    fast_args, _ = copy_args((handle, 1), {}, (DurableObjectId,))
    assert fast_args[0] is handle


def test_copy_args_refuses_unsupported() -> None:
    with pytest.raises(SerializationError, match="complex"):
        copy_args((1j,), {})
    with pytest.raises(SerializationError, match="complex"):
        copy_args((), {"x": 1j})


# Property test ------------------------------------------------------------------

OFFSETS = st.timedeltas(
    min_value=timedelta(hours=-24) + timedelta(microseconds=1),
    max_value=timedelta(hours=24) - timedelta(microseconds=1),
)
TZINFOS = (
    st.none()
    | st.just(UTC)
    | st.builds(timezone, OFFSETS)
    | st.builds(timezone, OFFSETS, st.text(max_size=5))
    | st.timezones()
)
DATETIMES = st.builds(
    lambda moment, fold: moment.replace(fold=fold),
    st.datetimes(timezones=TZINFOS),
    st.sampled_from([0, 1]),
)
HASHABLE_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.dates()
    | DATETIMES
    | st.decimals(allow_nan=False)
    | st.uuids()
)
HASHABLE = st.recursive(
    HASHABLE_LEAVES,
    lambda children: (
        st.lists(children, max_size=3).map(tuple) | st.frozensets(children, max_size=3)
    ),
    max_leaves=6,
)
LEAVES = HASHABLE_LEAVES | st.floats() | st.decimals()
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(HASHABLE, children, max_size=4)
        | st.sets(HASHABLE, max_size=4)
        | st.frozensets(HASHABLE, max_size=4)
    ),
    max_leaves=20,
)


@settings(deadline=None, max_examples=300)
@given(VALUES)
def test_roundtrip_property(value: Any) -> None:
    roundtrip(value)
    assert_same(value, copy_value(value))


def test_locate_reports_nothing_for_a_stranger() -> None:
    assert _locate([1, (2,)], object()) == ""
