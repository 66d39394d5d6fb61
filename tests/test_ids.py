from __future__ import annotations

import copy
import hashlib
import hmac
import pickle
from typing import TYPE_CHECKING

import pytest

from pyobjects._errors import InvalidIdError
from pyobjects._ids import JURISDICTIONS, DurableObjectId, IdFactory

if TYPE_CHECKING:
    from collections.abc import Callable

# workerd's api/tests/actor-kv-test.wd-test: the id its local factory makes.
VECTOR_KEY = "210bd0cbd803ef7883a1ee9d86cce06e"
VECTOR_NAME = "actor-kv-test"
VECTOR_ID = "aa299662980ce671dbcb09a5d7ab26ab30e45465bcd12f263f2bdd7d5edd804a"

BAD_HEX = "Invalid Durable Object ID: must be 64 hex digits"
BAD_MAC = "Durable Object ID is not valid for this namespace."


@pytest.fixture
def factory() -> IdFactory:
    return IdFactory("worker-Counter")


def reference_id(unique_key: str, name: str) -> str:
    """workerd's algorithm written with the stdlib hmac module."""
    key = hashlib.sha256(unique_key.encode()).digest()
    first = hmac.new(key, name.encode(), "sha256").digest()[:16]
    return (first + hmac.new(key, first, "sha256").digest()[:16]).hex()


def test_workerd_vector() -> None:
    made = IdFactory(VECTOR_KEY).from_name(VECTOR_NAME)
    assert str(made) == VECTOR_ID
    assert made.to_string() == VECTOR_ID
    assert reference_id(VECTOR_KEY, VECTOR_NAME) == VECTOR_ID


@pytest.mark.parametrize("name", ["", "a", "global", "é🙂", "x" * 1000, "\x00"])
def test_matches_stdlib_hmac(name: str) -> None:
    assert str(IdFactory("k").from_name(name)) == reference_id("k", name)


def test_stable_across_factories() -> None:
    first = IdFactory("worker-Counter").from_name("room")
    second = IdFactory("worker-Counter").from_name("room")
    assert first == second
    assert str(first) == str(second)


def test_unique_keys_give_different_ids() -> None:
    assert IdFactory("a").from_name("room") != IdFactory("b").from_name("room")


def test_names_give_different_ids(factory: IdFactory) -> None:
    assert factory.from_name("a") != factory.from_name("b")


def test_cached_result_is_correct_and_immutable(factory: IdFactory) -> None:
    ids = [factory.from_name(f"n{i}") for i in range(3000)]
    assert len(set(ids)) == 3000
    assert [str(factory.from_name(f"n{i}")) for i in range(3000)] == [
        str(i) for i in ids
    ]


def test_format(factory: IdFactory) -> None:
    made = factory.from_name("room")
    text = str(made)
    assert len(text) == 64
    assert text == text.lower()
    int(text, 16)


def test_attributes(factory: IdFactory) -> None:
    named = factory.from_name("room")
    assert named.name == "room"
    assert named.jurisdiction is None
    unique = factory.new_unique()
    assert unique.name is None
    assert unique.jurisdiction is None
    parsed = factory.from_string(str(named))
    assert parsed.name is None
    assert parsed == named


def test_repr(factory: IdFactory) -> None:
    named = factory.from_name("room", jurisdiction="eu")
    assert repr(named) == (
        f"DurableObjectId({str(named)!r}, name='room', jurisdiction='eu')"
    )
    unique = factory.new_unique()
    assert repr(unique) == f"DurableObjectId({str(unique)!r})"


def test_str_subclass_name_is_normalised(factory: IdFactory) -> None:
    class Name(str):
        pass

    made = factory.from_name(Name("room"))
    assert type(made.name) is str
    assert made == factory.from_name("room")


def test_equality_and_hash(factory: IdFactory) -> None:
    named = factory.from_name("room")
    parsed = factory.from_string(str(named))
    assert named == parsed
    assert named.name != parsed.name  # equality looks at the bytes only
    assert hash(named) == hash(parsed)
    assert named.equals(parsed)
    assert len({named, parsed}) == 1
    other = factory.from_name("other")
    assert named != other
    assert not named.equals(other)
    assert named != str(named)
    assert not named.equals(str(named))


def test_immutable(factory: IdFactory) -> None:
    made = factory.from_name("room")
    with pytest.raises(AttributeError, match="immutable"):
        made.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        made._fields = (b"", "", None, None, None)
    with pytest.raises(AttributeError, match="immutable"):
        made.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="immutable"):
        del made.name
    assert made.name == "room"


def test_constructor_is_private() -> None:
    with pytest.raises(TypeError, match="id_from_name"):
        DurableObjectId()


def test_pickle_and_copy(factory: IdFactory) -> None:
    made = factory.from_name("room", jurisdiction="us")
    for clone in (pickle.loads(pickle.dumps(made)), copy.copy(made)):
        assert clone == made
        assert clone.name == "room"
        assert clone.jurisdiction == "us"


def test_new_unique_ids_differ_and_validate(factory: IdFactory) -> None:
    ids = {factory.new_unique() for _ in range(100)}
    assert len(ids) == 100
    for made in ids:
        assert factory.from_string(str(made)) == made


def test_uppercase_hex_accepted(factory: IdFactory) -> None:
    made = factory.from_name("room")
    parsed = factory.from_string(str(made).upper())
    assert parsed == made
    assert str(parsed) == str(made)


@pytest.mark.parametrize("jurisdiction", sorted(JURISDICTIONS))
def test_jurisdiction(factory: IdFactory, jurisdiction: str) -> None:
    plain = factory.from_name("room")
    scoped = factory.from_name("room", jurisdiction=jurisdiction)
    assert scoped != plain
    assert scoped.jurisdiction == jurisdiction
    assert scoped.name == "room"
    text = str(scoped)
    # A top-level namespace accepts it and recovers the jurisdiction.
    top = factory.from_string(text)
    assert top == scoped
    assert top.jurisdiction == jurisdiction
    # So does the matching subnamespace.
    assert factory.from_string(text, jurisdiction=jurisdiction) == scoped
    # Other jurisdictions reject it, and the subnamespace rejects plain ids.
    for other in JURISDICTIONS - {jurisdiction}:
        with pytest.raises(InvalidIdError, match=f"^{BAD_MAC}$"):
            factory.from_string(text, jurisdiction=other)
    with pytest.raises(InvalidIdError, match=f"^{BAD_MAC}$"):
        factory.from_string(str(plain), jurisdiction=jurisdiction)


def test_jurisdiction_ids_differ_from_each_other(factory: IdFactory) -> None:
    ids = {factory.from_name("room", jurisdiction=j) for j in JURISDICTIONS}
    assert len(ids) == len(JURISDICTIONS)


def test_new_unique_in_jurisdiction(factory: IdFactory) -> None:
    made = factory.new_unique(jurisdiction="eu")
    assert made.jurisdiction == "eu"
    assert factory.from_string(str(made)).jurisdiction == "eu"
    assert factory.from_string(str(made), jurisdiction="eu") == made
    with pytest.raises(InvalidIdError):
        factory.from_string(str(made), jurisdiction="us")


def test_other_namespace_rejected() -> None:
    made = IdFactory("a").from_name("room")
    with pytest.raises(InvalidIdError, match=f"^{BAD_MAC}$"):
        IdFactory("b").from_string(str(made))


def test_tampered_id_rejected(factory: IdFactory) -> None:
    text = str(factory.from_name("room"))
    flipped = ("0" if text[0] != "0" else "1") + text[1:]
    with pytest.raises(InvalidIdError, match=f"^{BAD_MAC}$") as info:
        factory.from_string(flipped)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        VECTOR_ID[:-1],
        VECTOR_ID + "0",
        "g" + VECTOR_ID[1:],
        " " + VECTOR_ID[1:],
        VECTOR_ID[:10] + " " + VECTOR_ID[11:],
        VECTOR_ID[:62] + "  ",
        VECTOR_ID[:30] + "  " + VECTOR_ID[32:],
        "é" + VECTOR_ID[1:],
        "0x" + VECTOR_ID[2:],
    ],
)
def test_bad_hex(text: str) -> None:
    with pytest.raises(InvalidIdError, match=f"^{BAD_HEX}$"):
        IdFactory(VECTOR_KEY).from_string(text)


def test_from_string_refuses_non_str(factory: IdFactory) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        factory.from_string(bytes.fromhex(VECTOR_ID))  # type: ignore[arg-type]


def test_unknown_jurisdiction(factory: IdFactory) -> None:
    calls: list[Callable[[], DurableObjectId]] = [
        lambda: factory.from_name("room", jurisdiction="mars"),
        lambda: factory.new_unique(jurisdiction="mars"),
        lambda: factory.from_string(VECTOR_ID, jurisdiction="mars"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="'mars'") as info:
            call()
        assert "'eu', 'fedramp', 'fedramp-high', 'us'" in str(info.value)


def test_name_must_be_str(factory: IdFactory) -> None:
    with pytest.raises(TypeError, match="must be a str, not int"):
        factory.from_name(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str, not bytes"):
        factory.from_name(b"room")  # type: ignore[arg-type]


def test_lone_surrogate_name(factory: IdFactory) -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        factory.from_name("a\ud800")
