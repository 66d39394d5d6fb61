"""Registered value types: your own classes, carried by the codec by name.

`register_type` lets a dataclass, an `enum.Enum`, a named tuple, a pydantic
model or a msgspec Struct travel through storage, RPC and WebSocket
attachments and come back as the same class. The codec stores such a value
as its registered *name*, its *version* and its *state* (a dict of field
values, or an enum member's value); reading it back looks the name up here
and calls the class with the state. Nothing is ever unpickled or imported
by name, so stored bytes can only ever build classes registered in this
process, and only through their constructors.

The registry is process-wide: the one exception to "everything hangs off a
Runtime". It maps names to classes, which are process-wide themselves, and a
value written by one Runtime (or a previous run) must read back in another,
in `pyobjects inspect` or in a test harness, so it cannot belong to one of
them. Entries are added when a class is defined (a decorator) and never
change meaning: a name bound to one class refuses another.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeVar, final, overload

from msgpack import ExtType

from ._errors import SerializationError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BY_NAME",
    "BY_TYPE",
    "EXT_TYPE",
    "Registration",
    "Tag",
    "describe_unregistered",
    "register_type",
]

_T = TypeVar("_T")

# The codec's ext type code of a registered value (see _serialization).
EXT_TYPE: Final = 9
_MISSING: Final = object()
_KINDS: Final = (
    "dataclasses, enum.Enum subclasses, named tuples (typing.NamedTuple or "
    "collections.namedtuple), pydantic models and msgspec Structs"
)


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@final
class Tag:
    """What an ext marker decodes into: builds the array it heads."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[list[Any]], Any]) -> None:
        self.build = build


@final
class Registration:
    """How one registered class is lowered to a state and built back."""

    __slots__ = (
        "_build",
        "_lower",
        "cls",
        "decode_tag",
        "kind",
        "migrate",
        "name",
        "tag",
        "version",
    )

    def __init__(
        self,
        cls: type,
        *,
        name: str,
        version: int,
        migrate: Callable[[int, Any], Any] | None,
    ) -> None:
        self.cls = cls
        self.name = name
        self.version = version
        self.migrate = migrate
        self.kind, self._lower, self._build = _strategy(cls)
        # The codec's marker for this class: an ext whose payload is the name.
        self.tag = ExtType(EXT_TYPE, name.encode())
        self.decode_tag = Tag(self.restore)

    def lower(self, value: Any) -> list[Any]:
        """The encoded form of *value*: ``[tag, version, state]``."""
        return [self.tag, self.version, self._lower(value)]

    def children(self, value: Any) -> list[tuple[str, object]]:
        """The (field, item) pairs of *value*'s state, for error locations."""
        state = self._lower(value)
        if self.kind == "enum":
            return [("value", state)]
        if self.kind == "pydantic root":
            return [("root", state)]
        return list(state.items())

    def restore(self, items: list[Any]) -> Any:
        """Build the value from ``[version, state]``, migrating old versions.

        Raises:
            SerializationError: If the stored version is newer than the
                registered one, older without a migrate function, or the
                class refuses the state.
        """
        if len(items) != 2 or type(items[0]) is not int:
            raise ValueError(f"malformed value of registered type {self.name!r}")
        version, state = items
        if version == self.version:
            try:
                return self._build(state)
            except Exception as exc:
                hint = (
                    "; if the class changed, raise its version and pass a "
                    "migrate function to register_type"
                )
                raise self._refused(version, exc, hint) from exc
        return self._upgrade(version, state)

    def _upgrade(self, version: int, state: Any) -> Any:
        where = f"Cannot deserialize a {self.name!r} value of version {version}"
        cls_name = _type_name(self.cls)
        if version > self.version:
            msg = (
                f"{where}: it was written by newer code, and {cls_name} is "
                f"registered here as version {self.version}"
            )
            raise SerializationError(msg)
        if self.migrate is None:
            msg = (
                f"{where}: {cls_name} is registered as version "
                f"{self.version} without a migrate function; pass "
                "migrate=fn to register_type to upgrade stored values"
            )
            raise SerializationError(msg)
        try:
            state = self.migrate(version, state)
        except Exception as exc:
            msg = (
                f"{where}: migrating it to version {self.version} failed: "
                f"{type(exc).__name__}: {exc}"
            )
            raise SerializationError(msg) from exc
        try:
            return self._build(state)
        except Exception as exc:
            hint = f" (the state migrate returned for version {self.version})"
            raise self._refused(version, exc, hint) from exc

    def _refused(self, version: int, exc: Exception, hint: str) -> SerializationError:
        msg = (
            f"Cannot deserialize a {self.name!r} value of version {version} into "
            f"{_type_name(self.cls)}: {type(exc).__name__}: {exc}{hint}"
        )
        return SerializationError(msg)


# Strategies: (kind, lower, build) for each supported kind of class ----------

_Strategy = tuple[str, "Callable[[Any], Any]", "Callable[[Any], Any]"]


def _fields_state(names: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    # A plain loop: faster here than operator.attrgetter plus dict(zip(...)).
    def lower(value: Any) -> dict[str, Any]:
        state = {}
        for name in names:
            item = getattr(value, name, _MISSING)
            if item is not _MISSING:  # an init=False field never assigned
                state[name] = item
        return state

    return lower


def _check_state(cls: type, state: object, names: frozenset[str]) -> dict[str, Any]:
    if type(state) is not dict:
        msg = f"the state must be a dict of fields, not {_type_name(type(state))}"
        raise TypeError(msg)
    if not names.issuperset(state):
        unknown = [key for key in state if key not in names]
        listed = ", ".join(repr(k) for k in unknown)
        are = "is not a field" if len(unknown) == 1 else "are not fields"
        raise TypeError(f"{listed} {are} of {_type_name(cls)}")
    return state


def _dataclass(cls: type) -> _Strategy:
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    known = frozenset(names)
    not_init = frozenset(f.name for f in fields if not f.init)

    def build(state: Any) -> Any:
        state = _check_state(cls, state, known)
        if not not_init:
            return cls(**state)
        value = cls(**{k: v for k, v in state.items() if k not in not_init})
        for key in not_init & state.keys():
            # The constructor cannot take these; frozen classes included.
            object.__setattr__(value, key, state[key])
        return value

    return "dataclass", _fields_state(names), build


def _named_tuple(cls: type) -> _Strategy:
    names: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    known = frozenset(names)

    def build(state: Any) -> Any:
        return cls(**_check_state(cls, state, known))

    return "named tuple", lambda value: dict(zip(names, value, strict=True)), build


def _pydantic(cls: Any) -> _Strategy:
    if getattr(cls, "__pydantic_root_model__", False):
        return (
            "pydantic root",
            lambda value: value.root,
            lambda state: cls.model_validate(state),
        )
    names = tuple(cls.model_fields)
    plain = _fields_state(names)

    def lower(value: Any) -> dict[str, Any]:
        state = plain(value)
        extra = value.__pydantic_extra__  # fields of model_config extra="allow"
        if extra:
            state.update(extra)
        return state

    def build(state: Any) -> Any:
        if type(state) is not dict:
            msg = f"the state must be a dict of fields, not {_type_name(type(state))}"
            raise TypeError(msg)
        # by_name: stored keys are field names even where a field has an alias.
        return cls.model_validate(state, by_name=True)

    return "pydantic", lower, build


def _msgspec(cls: Any) -> _Strategy:
    names: tuple[str, ...] = cls.__struct_fields__
    known = frozenset(names)

    def build(state: Any) -> Any:
        return cls(**_check_state(cls, state, known))

    return "msgspec", _fields_state(names), build


def _enum(cls: Any) -> _Strategy:
    def build(value: Any) -> Any:
        # The member map first: calling an enum class costs several times more.
        try:
            return cls._value2member_map_[value]
        except (KeyError, TypeError):  # an unhashable value, a Flag composite
            return cls(value)

    return "enum", lambda value: value._value_, build


def _strategy(cls: type) -> _Strategy:
    # pydantic and msgspec are optional: if a class is one of their models,
    # its library is already imported, so look in sys.modules, never import.
    pydantic_main = sys.modules.get("pydantic.main")
    msgspec = sys.modules.get("msgspec")
    if issubclass(cls, Enum):
        return _enum(cls)
    if pydantic_main is not None and issubclass(cls, pydantic_main.BaseModel):
        return _pydantic(cls)
    if msgspec is not None and issubclass(cls, msgspec.Struct):
        return _msgspec(cls)
    if dataclasses.is_dataclass(cls):
        return _dataclass(cls)
    if issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return _named_tuple(cls)
    msg = f"register_type() takes {_KINDS}; {_type_name(cls)} is none of them"
    raise TypeError(msg)


def _registrable(cls: type) -> bool:
    try:
        _strategy(cls)
    except TypeError:
        return False
    return True


# The registry ----------------------------------------------------------------

BY_TYPE: Final[dict[type, Registration]] = {}
BY_NAME: Final[dict[str, Registration]] = {}
_LOCK: Final = threading.Lock()


def _add(
    cls: type, name: str | None, version: int, migrate: Callable[[int, Any], Any] | None
) -> None:
    if not isinstance(cls, type):
        raise TypeError(f"register_type() takes a class, not {cls!r}")
    if name is None:
        name = _type_name(cls)
    elif type(name) is not str or not name:
        raise TypeError(f"register_type() name must be a non-empty str, not {name!r}")
    if type(version) is not int or not 1 <= version < 2**63:
        msg = f"register_type() version must be an int from 1, not {version!r}"
        raise TypeError(msg)
    if migrate is not None and not callable(migrate):
        raise TypeError(f"register_type() migrate must be callable, not {migrate!r}")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"register_type() name {name!r} is not valid UTF-8") from None
    registration = Registration(cls, name=name, version=version, migrate=migrate)
    with _LOCK:
        old = BY_TYPE.get(cls)
        if old is not None:
            if (old.name, old.version, old.migrate) == (name, version, migrate):
                return
            msg = (
                f"{_type_name(cls)} is already registered as {old.name!r} "
                f"version {old.version}"
            )
            raise ValueError(msg)
        taken = BY_NAME.get(name)
        if taken is not None:
            if _type_name(taken.cls) != _type_name(cls):
                msg = (
                    f"the name {name!r} is already registered for "
                    f"{_type_name(taken.cls)}; pass another name= for {_type_name(cls)}"
                )
                raise ValueError(msg)
            # The same module and class defined again (importlib.reload, a
            # notebook cell run twice): the new class takes the name over.
            del BY_TYPE[taken.cls]
        BY_TYPE[cls] = registration
        BY_NAME[name] = registration


@overload
def register_type(
    cls: type[_T],
    /,
    *,
    name: str | None = None,
    version: int = 1,
    migrate: Callable[[int, Any], Any] | None = None,
) -> type[_T]: ...


@overload
def register_type(
    *,
    name: str | None = None,
    version: int = 1,
    migrate: Callable[[int, Any], Any] | None = None,
) -> Callable[[type[_T]], type[_T]]: ...


def register_type(
    cls: type[_T] | None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
    migrate: Callable[[int, Any], Any] | None = None,
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """Let instances of *cls* be stored, passed by RPC and come back as *cls*.

    Works on dataclasses, `enum.Enum` subclasses (``IntEnum``, ``StrEnum``
    and ``Flag`` included), named tuples, pydantic models and msgspec
    Structs. Use it as a decorator, bare or with options, or call it. The
    value is stored as *name*, *version* and its fields (an enum member as
    its value) and rebuilt by calling the class, never by unpickling.
    Registering the same class again with the same options does nothing.

    Args:
        cls: The class to register.
        name: The name stored with each value, which must stay the same for
            as long as stored values should read back. Defaults to
            ``"module.QualifiedName"``; pass a name explicitly if the class
            might move or be renamed.
        version: The version of the class's fields, from 1. Raise it when
            the fields change, and pass *migrate*.
        migrate: ``migrate(old_version, state)`` turns the state of a value
            stored by an older version (a dict of field values; an enum
            member's value) into the state the current class takes.

    Returns:
        *cls* itself, or a decorator when *cls* is omitted.

    Raises:
        TypeError: If *cls* is not of a supported kind, or an option has the
            wrong type.
        ValueError: If *name* already belongs to another class, or *cls* is
            registered with other options.
    """
    if cls is None:

        def decorator(cls: type[_T], /) -> type[_T]:
            _add(cls, name, version, migrate)
            return cls

        return decorator
    _add(cls, name, version, migrate)
    return cls


def describe_unregistered(cls: type) -> str | None:
    """Why a value of *cls* is refused, if *cls* could be registered."""
    for base in cls.__mro__[1:]:
        if base in BY_TYPE:
            return (
                f"{_type_name(cls)} is not registered, though its base class "
                f"{_type_name(base)} is; register each class with "
                "@pyobjects.register_type"
            )
    if not _registrable(cls):
        return None
    return (
        f"{_type_name(cls)} is not registered: register it with "
        "@pyobjects.register_type to get it back as itself"
    )
