"""register_type() and the codec's handling of registered classes (#15)."""

from __future__ import annotations

import collections
import dataclasses
import enum
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, assert_type

import msgspec
import pydantic
import pytest
from hypothesis import given, settings, strategies as st

import pyobjects
from pyobjects import SerializationError, register_type
from pyobjects._registry import BY_NAME, BY_TYPE
from pyobjects._serialization import copy_value, decode, encode

from .test_serialization import VALUES, assert_same

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    """Each test registers its own classes; the registry is restored after."""
    by_type, by_name = dict(BY_TYPE), dict(BY_NAME)
    yield
    BY_TYPE.clear()
    BY_TYPE.update(by_type)
    BY_NAME.clear()
    BY_NAME.update(by_name)


def roundtrip(value: Any) -> Any:
    got = decode(encode(value))
    assert type(got) is type(value)
    assert got == value
    return got


# The API -------------------------------------------------------------------------


def test_the_three_spellings_register_and_return_the_class() -> None:
    @register_type
    @dataclass
    class Bare:
        n: int

    @register_type(name="spelled.Options", version=2)
    @dataclass
    class Options:
        n: int

    @dataclass
    class Called:
        n: int

    assert register_type(Called) is Called
    assert BY_TYPE[Bare].name == (
        "tests.test_registry."
        "test_the_three_spellings_register_and_return_the_class.<locals>.Bare"
    )
    assert (BY_TYPE[Options].name, BY_TYPE[Options].version) == ("spelled.Options", 2)
    for value in (Bare(1), Options(2), Called(3)):
        roundtrip(value)
    assert pyobjects.register_type is register_type


def test_register_type_keeps_the_static_type() -> None:
    @dataclass
    class Typed:
        n: int

    decorator = register_type(name="typed.Typed")
    assert_type(decorator(Typed), type[Typed])
    assert register_type(Typed, name="typed.Typed") is Typed  # the same: no-op
    assert_type(register_type(Typed, name="typed.Typed"), type[Typed])
    assert_type(Typed(1).n, int)


def test_registering_again_with_the_same_options_does_nothing() -> None:
    @dataclass
    class Twice:
        n: int

    def migrate(version: int, state: Any) -> Any:
        return state

    register_type(Twice, name="twice", version=2, migrate=migrate)
    register_type(Twice, name="twice", version=2, migrate=migrate)
    roundtrip(Twice(1))
    with pytest.raises(ValueError, match=r"Twice is already registered as 'twice' ve"):
        register_type(Twice, name="twice", version=3, migrate=migrate)
    with pytest.raises(ValueError, match="already registered"):
        register_type(Twice, name="other", version=2, migrate=migrate)


def test_a_name_belongs_to_one_class() -> None:
    @register_type(name="taken")
    @dataclass
    class First:
        n: int

    @dataclass
    class Second:
        n: int

    with pytest.raises(ValueError, match="already registered for") as info:
        register_type(Second, name="taken")
    assert str(info.value) == (
        "the name 'taken' is already registered for "
        "tests.test_registry.test_a_name_belongs_to_one_class.<locals>.First; "
        "pass another name= for "
        "tests.test_registry.test_a_name_belongs_to_one_class.<locals>.Second"
    )
    assert BY_NAME["taken"].cls is First
    assert Second not in BY_TYPE


def test_the_same_class_defined_again_takes_its_name_over() -> None:
    def define() -> type:
        @dataclass
        class Reloaded:  # same module and qualified name each time
            n: int

        return register_type(Reloaded, name="reloaded")

    old, new = define(), define()
    assert BY_NAME["reloaded"].cls is new
    assert old not in BY_TYPE
    assert type(roundtrip(new(1))) is new
    with pytest.raises(SerializationError, match="is not registered"):
        encode(old(1))


class Plain:
    pass


@pytest.mark.parametrize(
    ("args", "options", "error", "message"),
    [
        ((Plain,), {}, TypeError, "register_type() takes dataclasses, enum.Enum "),
        ((int,), {}, TypeError, "; int is none of them"),
        ((Plain(),), {}, TypeError, "register_type() takes a class, not <tests."),
        ((enum.Enum,), {"name": ""}, TypeError, "name must be a non-empty str"),
        ((enum.Enum,), {"name": 1}, TypeError, "name must be a non-empty str"),
        ((enum.Enum,), {"version": 0}, TypeError, "version must be an int from 1"),
        ((enum.Enum,), {"version": True}, TypeError, "version must be an int"),
        ((enum.Enum,), {"version": 2**63}, TypeError, "version must be an int"),
        ((enum.Enum,), {"migrate": 1}, TypeError, "migrate must be callable, not 1"),
        ((enum.Enum,), {"name": "\udc80"}, ValueError, "is not valid UTF-8"),
    ],
)
def test_bad_registrations_are_refused(
    args: tuple[Any, ...], options: dict[str, Any], error: type, message: str
) -> None:
    before = dict(BY_TYPE)
    with pytest.raises(error) as info:
        register_type(*args, **options)
    assert message in str(info.value)
    assert before == BY_TYPE


def test_the_supported_kinds_are_listed_in_the_refusal() -> None:
    with pytest.raises(TypeError) as info:
        register_type(Plain)
    assert str(info.value) == (
        "register_type() takes dataclasses, enum.Enum subclasses, named tuples "
        "(typing.NamedTuple or collections.namedtuple), pydantic models and "
        "msgspec Structs; tests.test_registry.Plain is none of them"
    )


def test_registering_does_not_import_pydantic_or_msgspec() -> None:
    code = textwrap.dedent(
        """
        import dataclasses, sys, pyobjects
        from pyobjects._serialization import decode, encode

        @pyobjects.register_type
        @dataclasses.dataclass
        class D:
            n: int

        assert decode(encode(D(1))) == D(1)
        print(sorted({"pydantic", "msgspec"} & set(sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# Kinds ---------------------------------------------------------------------------


def test_dataclass_round_trips_call_the_constructor() -> None:
    @register_type
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Frozen:
        a: int
        b: list[int] = dataclasses.field(default_factory=list)
        derived: int = dataclasses.field(init=False, default=0)
        built: ClassVar[int] = 0

        def __post_init__(self) -> None:
            type(self).built += 1
            object.__setattr__(self, "derived", self.a * 2)

    value = Frozen(a=2, b=[1])
    object.__setattr__(value, "derived", 99)  # a state __post_init__ would not make
    got = roundtrip(value)
    assert got.derived == 99  # init=False fields are stored and restored
    assert Frozen.built == 2  # __post_init__ ran again when decoding
    assert got.b is not value.b


def test_an_unset_init_false_field_stays_unset() -> None:
    @register_type
    @dataclass
    class Lazy:
        a: int
        later: int = dataclasses.field(init=False)

    got = decode(encode(Lazy(1)))
    assert type(got) is Lazy
    assert got.a == 1
    assert not hasattr(got, "later")


def test_enums_are_stored_by_value() -> None:
    @register_type
    class Shape(enum.Enum):
        SQUARE = (4, "sides")
        CIRCLE = frozenset({0})

    @register_type
    class Mode(enum.StrEnum):
        FAST = "fast"

    @register_type
    class Bits(enum.IntFlag):
        A = 1
        B = 2

    for member in (Shape.SQUARE, Shape.CIRCLE, Mode.FAST, Bits.A | Bits.B, Bits(0)):
        assert roundtrip(member) is member


Untyped = collections.namedtuple("Untyped", "a b")  # noqa: PYI024


def test_named_tuples_of_both_spellings() -> None:
    @register_type
    class Typed(NamedTuple):
        x: int
        y: tuple[int, ...] = ()

    untyped = register_type(Untyped)
    roundtrip(Typed(1, (2, 3)))
    roundtrip(untyped(1, [2]))
    assert roundtrip({Typed(1): untyped(0, 0)}) == {Typed(1): untyped(0, 0)}


def test_pydantic_models_are_validated_when_decoded() -> None:
    validated: list[object] = []

    @register_type
    class Inner(pydantic.BaseModel):
        tag: str = pydantic.Field(alias="Tag")

    @register_type
    class Model(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow", frozen=True)
        inner: Inner
        n: int
        _secret: int = pydantic.PrivateAttr(default=0)

        @pydantic.field_validator("n")
        @classmethod
        def check(cls, n: int) -> int:
            validated.append(n)
            return n

    value = Model.model_validate(
        {"inner": Inner(Tag="t"), "n": 1, "extra_field": {"a"}}
    )
    roundtrip(value)
    value._secret = 5
    got = decode(encode(value))
    assert type(got.inner) is Inner
    assert got.model_dump() == value.model_dump()
    assert got.model_extra == {"extra_field": {"a"}}
    assert got._secret == 0  # private attributes are not stored
    assert validated == [1, 1, 1]


def test_pydantic_root_models() -> None:
    @register_type
    class Numbers(pydantic.RootModel[list[Any]]):
        pass

    assert roundtrip(Numbers([1, 2])).root == [1, 2]
    with pytest.raises(SerializationError, match=r"'complex' value at \.root\[1\]"):
        encode(Numbers([1, 1j]))


def test_a_pydantic_model_refuses_a_state_that_is_not_a_dict() -> None:
    @register_type(name="p")
    class Old(pydantic.BaseModel):
        n: int

    data = encode(Old(n=1))
    BY_TYPE.pop(BY_NAME.pop("p").cls)

    @register_type(name="p", version=2, migrate=lambda version, state: state["n"])
    class New(pydantic.BaseModel):
        n: int

    with pytest.raises(SerializationError, match="must be a dict of fields, not int"):
        decode(data)


def test_a_pydantic_validator_that_refuses_old_data_fails_clearly() -> None:
    @register_type(name="strict")
    class Loose(pydantic.BaseModel):
        n: int

    data = encode(Loose(n=-1))
    BY_TYPE.pop(BY_NAME.pop("strict").cls)

    @register_type(name="strict")
    class Strict(pydantic.BaseModel):
        n: pydantic.PositiveInt

    with pytest.raises(SerializationError, match=r"into .*Strict: ValidationError: "):
        decode(data)


def test_msgspec_structs() -> None:
    @register_type
    class Point(msgspec.Struct, frozen=True, rename="camel"):
        x_pos: int
        tags: frozenset[str] = frozenset()

    roundtrip(Point(1, frozenset({"a"})))
    roundtrip({Point(0): [Point(2)]})


# Encoding details -----------------------------------------------------------------


def test_the_format_is_stable() -> None:
    @register_type(name="g.Pt")
    @dataclass
    class Pt:
        x: int
        y: str

    @register_type(name="g.C", version=3)
    class C(enum.Enum):
        A = 1

    # [ext 9 "g.Pt", 1, {"x": 1, "y": "a"}] and [ext 9 "g.C", 3, 1]
    assert encode(Pt(1, "a")).hex() == "93d609672e50740182a17801a179a161"
    assert encode(C.A).hex() == "93c70309672e430301"
    assert decode(bytes.fromhex("93d609672e50740182a17801a179a161")) == Pt(1, "a")


def test_a_subclass_of_a_registered_class_is_refused() -> None:
    @register_type
    @dataclass
    class Base:
        n: int

    @dataclass
    class Derived(Base):
        pass

    with pytest.raises(SerializationError) as info:
        encode([Derived(1)])
    assert "Derived is not registered, though its base class " in str(info.value)
    assert "Base is; register each class with @pyobjects.register_type" in str(
        info.value
    )


def test_errors_inside_registered_values_name_the_field() -> None:
    @register_type
    @dataclass
    class Holder:
        items: list[Any]

    @register_type
    class Odd(enum.Enum):
        X = 1j

    with pytest.raises(SerializationError, match=r"'complex' value at \[0\]\.items"):
        encode([Holder([0, {"k": 1j}])])
    with pytest.raises(SerializationError, match=r"'complex' value at \.value: "):
        encode(Odd.X)


def test_a_registered_value_that_contains_itself() -> None:
    @register_type
    @dataclass
    class Node:
        next: Any = None

    node = Node()
    node.next = [Node(), node]
    with pytest.raises(SerializationError) as info:
        encode(node)
    assert str(info.value) == (
        "Cannot serialize a value that contains itself (at .next[1])"
    )


def test_registered_values_count_towards_the_depth_limit() -> None:
    @register_type
    @dataclass
    class Wrap:
        inner: Any

    value: Any = 0
    for _ in range(600):  # two msgpack levels each: 1,200 > 1,024
        value = Wrap(value)
    with pytest.raises(SerializationError, match="nested more than 1024 levels"):
        encode(value)
    shallow: Any = 0
    for _ in range(500):
        shallow = Wrap(shallow)
    got = decode(encode(shallow))
    for _ in range(500):
        assert type(got) is Wrap
        got = got.inner
    assert got == 0


@pytest.mark.parametrize(
    "data",
    [
        "92c70209666f01",  # [ext 9 "fo", 1]: no state
        "93c7020966 6f a1 31 80".replace(" ", ""),  # version is a str
    ],
)
def test_malformed_registered_values_are_refused(data: str) -> None:
    @register_type(name="fo")
    @dataclass
    class Fo:
        pass

    with pytest.raises(ValueError, match="malformed value of registered type 'fo'"):
        decode(bytes.fromhex(data))


def test_a_migrate_hook_returning_a_bad_state_is_reported() -> None:
    @register_type(name="m")
    @dataclass
    class V1:
        n: int

    data = encode(V1(1))
    BY_TYPE.pop(BY_NAME.pop("m").cls)

    @register_type(name="m", version=2, migrate=lambda version, state: [state])
    @dataclass
    class V2:
        n: int

    with pytest.raises(SerializationError) as info:
        decode(data)
    assert str(info.value).endswith(
        "V2: TypeError: the state must be a dict of fields, not list "
        "(the state migrate returned for version 2)"
    )


def test_copy_value_copies_registered_values() -> None:
    @register_type
    @dataclass
    class Box:
        items: list[int]

    @register_type
    class Flavor(enum.Enum):
        SWEET = 1

    box = Box([1])
    copied = copy_value([box, Flavor.SWEET], passthrough=(Plain,))
    assert copied == [box, Flavor.SWEET]
    assert copied[0] is not box
    assert copied[0].items is not box.items
    assert copied[1] is Flavor.SWEET


# Property ------------------------------------------------------------------------


@register_type(name="tests.registry.Record")
@dataclass
class Record:
    payload: Any
    flavor: Flavor2
    pair: Pair


@register_type(name="tests.registry.Flavor2")
class Flavor2(enum.Enum):
    SWEET = 1
    SOUR = "sour"


@register_type(name="tests.registry.Pair")
class Pair(NamedTuple):
    left: Any
    right: Any


RECORDS = st.recursive(
    st.builds(
        Record, VALUES, st.sampled_from(Flavor2), st.builds(Pair, VALUES, VALUES)
    ),
    lambda children: st.builds(
        Record,
        st.lists(children, max_size=3),
        st.sampled_from(Flavor2),
        st.builds(Pair, children, VALUES),
    ),
    max_leaves=4,
)


def assert_same_record(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if type(a) is Record:
        assert_same_record(a.payload, b.payload)
        assert a.flavor is b.flavor
        assert_same_record(a.pair, b.pair)
    elif type(a) is Pair:
        assert_same_record(a.left, b.left)
        assert_same_record(a.right, b.right)
    elif type(a) is list:
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_record(x, y)
    else:
        assert_same(a, b)


@settings(deadline=None, max_examples=100)
@given(RECORDS)
def test_registered_values_round_trip_property(value: Record) -> None:
    assert_same_record(value, decode(encode(value)))
    assert_same_record(value, copy_value(value))
