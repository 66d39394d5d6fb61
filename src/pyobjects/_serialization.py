"""The value codec: msgpack plus a few ext types.

This is the only place where values become bytes: storage values, and the
by-value copies of RPC arguments and results. Every supported value comes
back equal, of the same exact type (nested values too), and as a fresh copy.

Format (stored on disk, so the codes must never be renumbered):

- msgpack natives: ``None``, ``bool``, ``int`` in [-2**63, 2**64), ``float``
  (float64, so nan, inf and -0.0 keep their bits), ``str``, ``bytes``,
  ``list`` and ``dict`` (a map; keys of any supported hashable type, in
  insertion order).
- ext 1, 2, 3 (tuple, set, frozenset): an empty ext used as a tag, as the
  first element of an array holding the items. Arrays rather than nested
  ext payloads keep one packer and one depth limit for the whole value, so a
  reference cycle through a tuple fails like one through a list.
- ext 4: an ``int`` outside the native range, two's complement, big-endian.
- ext 5: ``datetime.datetime``: year, month, day, hour, minute, second,
  microsecond and fold, then the tzinfo: nothing (naive), a
  ``datetime.timezone`` (offset in microseconds, and its name if it has one),
  or a ``zoneinfo.ZoneInfo`` key.
- ext 6: ``datetime.date``. ext 7: ``decimal.Decimal`` as ``str(d)``, which
  is exact (sign, digits, exponent, NaN payload). ext 8: ``uuid.UUID``, 16
  bytes.
- ext 9: a value of a class registered with `register_type` (see
  `pyobjects._registry`): an ext holding the registered name, as the first
  element of an array ``[ext, version, state]``; the state is a map of field
  values (an enum member's value, a pydantic root model's root).
- ext 64: a reference to an object passed through a copy by identity (see
  `copy_value`); only ever inside one copy, never stored.

Subclasses of the supported types (``IntEnum``/``StrEnum`` members, named
tuples, ``OrderedDict``, ``defaultdict``, ...) raise `SerializationError`
instead of silently coming back as the base type, unless their class is
registered; the message says how to register or convert them. Known gap:
msgpack packs ``bytearray`` and ``memoryview`` before the codec sees them,
so they come back as ``bytes``.
"""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID
from zoneinfo import ZoneInfo

from msgpack import ExtType, Packer, unpackb

from ._errors import MessageTooLargeError, SerializationError
from ._registry import (
    BY_NAME,
    BY_TYPE,
    EXT_TYPE,
    Tag as _Tag,  # what an array tagged as a tuple, set, ... decodes into
    describe_unregistered,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_VALUE_BYTES", "copy_args", "copy_value", "decode", "encode"]

MAX_VALUE_BYTES: Final = 131_072
# Cloudflare's limit on serialized RPC arguments or results (1 << 25).
MAX_RPC_BYTES: Final = 32 * 1024 * 1024
"""Largest encoded value storage accepts (Cloudflare's KV-backed limit)."""

_MAX_DEPTH: Final = 1024  # msgpack's nesting limit; its unpacker has the same
_EXT_TUPLE: Final = 1
_EXT_SET: Final = 2
_EXT_FROZENSET: Final = 3
_EXT_INT: Final = 4
_EXT_DATETIME: Final = 5
_EXT_DATE: Final = 6
_EXT_DECIMAL: Final = 7
_EXT_UUID: Final = 8
_EXT_REF: Final = 64

_DATETIME: Final = struct.Struct(">HBBBBBIB")
_DATE: Final = struct.Struct(">HBB")
_OFFSET: Final = struct.Struct(">q")
_TZ_OFFSET: Final = b"\x01"  # timezone(offset)
_TZ_NAMED: Final = b"\x02"  # timezone(offset, name)
_TZ_ZONE: Final = b"\x03"  # ZoneInfo(key)
_UTC_OFFSET: Final = _TZ_OFFSET + _OFFSET.pack(0)
_MICROSECOND: Final = timedelta(microseconds=1)

# Packing a small value costs less than growing msgpack's default 256 KiB buffer.
_BUFFER_SIZE: Final = 1024
# Types that are immutable and that a round trip would return equal and of the
# same type, so a copy can hand them back as they are.
_SCALARS: Final = frozenset({type(None), bool, int, float, bytes})
_CONTAINERS: Final = frozenset({list, tuple, dict, set, frozenset})


_TUPLE_TAG: Final = ExtType(_EXT_TUPLE, b"")
_SET_TAG: Final = ExtType(_EXT_SET, b"")
_FROZENSET_TAG: Final = ExtType(_EXT_FROZENSET, b"")
_AS_TUPLE: Final = _Tag(tuple)
_AS_SET: Final = _Tag(set)
_AS_FROZENSET: Final = _Tag(frozenset)


class _Rejected(Exception):
    """Raised inside msgpack's ``default`` hook; `encode` adds the location."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason


# Encoding ------------------------------------------------------------------


def _encode_int(value: int) -> ExtType:
    size = (value.bit_length() + 8) // 8  # room for the sign bit
    return ExtType(_EXT_INT, value.to_bytes(size, "big", signed=True))


def _encode_tzinfo(value: datetime, tz: tzinfo) -> bytes:
    if tz is UTC:
        return _UTC_OFFSET
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        micros = _OFFSET.pack(offset // _MICROSECOND)
        name = tz.tzname(None)
        if name == timezone(offset).tzname(None):
            return _TZ_OFFSET + micros
        return _TZ_NAMED + micros + name.encode("utf-8", "surrogatepass")
    if type(tz) is ZoneInfo and tz.key is not None:
        return _TZ_ZONE + tz.key.encode()
    reason = (
        f"its tzinfo is {_type_name(type(tz))}; only datetime.timezone and "
        "zoneinfo.ZoneInfo (made from a key) are supported"
    )
    raise _Rejected(value, reason)


def _encode_datetime(value: datetime) -> ExtType:
    head = _DATETIME.pack(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        value.fold,
    )
    tz = value.tzinfo
    if tz is None:
        return ExtType(_EXT_DATETIME, head)
    return ExtType(_EXT_DATETIME, head + _encode_tzinfo(value, tz))


def _encode_date(value: date) -> ExtType:
    return ExtType(_EXT_DATE, _DATE.pack(value.year, value.month, value.day))


_ENCODERS: Final[dict[type, Callable[[Any], object]]] = {
    tuple: lambda value: [_TUPLE_TAG, *value],
    set: lambda value: [_SET_TAG, *value],
    frozenset: lambda value: [_FROZENSET_TAG, *value],
    int: _encode_int,  # only reached outside msgpack's native range
    datetime: _encode_datetime,
    date: _encode_date,
    Decimal: lambda value: ExtType(_EXT_DECIMAL, str(value).encode("ascii")),
    UUID: lambda value: ExtType(_EXT_UUID, value.bytes),
}

# Checked in order: datetime is a subclass of date.
_BASES: Final = (
    int,
    float,
    str,
    bytes,
    list,
    tuple,
    dict,
    set,
    frozenset,
    datetime,
    date,
    Decimal,
    UUID,
)
_HINTS: Final[dict[type, str]] = {
    datetime: "datetime.datetime.combine(x.date(), x.timetz())",
    date: "datetime.date(x.year, x.month, x.day)",
    Decimal: "decimal.Decimal(x)",
    UUID: "uuid.UUID(int=x.int)",
}
_SUPPORTED: Final = (
    "None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, "
    "datetime.datetime, datetime.date, decimal.Decimal and uuid.UUID, and "
    "classes registered with pyobjects.register_type"
)


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _reject(value: object) -> _Rejected:
    """Explain why *value*, which msgpack could not pack, is refused."""
    unregistered = describe_unregistered(type(value))
    for base in _BASES:
        if isinstance(value, base):
            if isinstance(value, Enum):
                hint = "x.value"
            else:
                hint = _HINTS.get(base, f"{base.__name__}(x)")
            if unregistered is not None:
                reason = f"{unregistered}, or convert it first, e.g. {hint}"
            else:
                reason = (
                    f"it is a subclass of {_type_name(base)}, which would come "
                    f"back as a plain {_type_name(base)}; convert it first, "
                    f"e.g. {hint}"
                )
            return _Rejected(value, reason)
    if unregistered is not None:
        return _Rejected(value, unregistered)
    return _Rejected(value, f"supported types are {_SUPPORTED}")


def _default(value: object) -> object:
    """Lower a value msgpack does not pack natively (msgpack's ``default`` hook)."""
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        registered = BY_TYPE.get(type(value))
        if registered is None:
            raise _reject(value)
        return registered.lower(value)
    return encoder(value)


# A path through a value, as a linked list from the item back to the root:
# (parent trail, kind of step, index or key). Paths are spelled out only for
# the one item an error names, so finding it costs time and memory linear in
# the value, however deep it nests (a path per visited item would be
# quadratic: 100,000 levels would need gigabytes).
_Trail = tuple["_Trail", str, object] | None


def _expands(node: object) -> bool:
    """Whether the error searches look inside *node*."""
    return type(node) in _CONTAINERS or type(node) in BY_TYPE


def _children(node: Any, trail: _Trail) -> list[tuple[object, _Trail]]:
    """List the items of a container with their trails, in packing order."""
    registered = BY_TYPE.get(type(node))
    if registered is not None:
        return [(item, (trail, "field", f)) for f, item in registered.children(node)]
    if type(node) is list or type(node) is tuple:
        return [(item, (trail, "index", i)) for i, item in enumerate(node)]
    if type(node) is dict:
        out: list[tuple[object, _Trail]] = []
        for i, (key, item) in enumerate(node.items()):
            out.append((key, (trail, "key", i)))
            out.append((item, (trail, "value", key)))
        return out
    # set or frozenset: callers pass containers only
    return [(item, (trail, "item", i)) for i, item in enumerate(node)]


_STEP_FORMATS: Final = {
    "index": "[{}]",
    "key": "<key #{}>",
    "value": "[{!r}]",
    "item": "<item #{}>",
    "field": ".{}",
}


def _path(trail: _Trail) -> str:
    """Spell out a trail: ``[0]['a']<key #1>``."""
    steps = []
    while trail is not None:
        trail, kind, where = trail
        steps.append(_STEP_FORMATS[kind].format(where))
    return "".join(reversed(steps))


def _locate(root: object, target: object) -> str:
    """Return the path from *root* to *target* (by identity), for messages."""
    seen: set[int] = set()
    stack: list[tuple[object, _Trail]] = [(root, None)]
    while stack:
        node, trail = stack.pop()
        if node is target:
            return _path(trail)
        if _expands(node) and id(node) not in seen:
            seen.add(id(node))
            stack.extend(reversed(_children(node, trail)))
    return ""


def _find_cycle(root: object) -> str | None:
    """Return the path of a container that contains itself, if there is one.

    Only the first ``_MAX_DEPTH + 1`` levels are searched: the packer gave up
    there, so a value without a cycle that shallow is too deep either way.
    Every container is expanded at most once.
    """
    active: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[object, _Trail, int, bool]] = [(root, None, 0, False)]
    while stack:
        node, trail, depth, leaving = stack.pop()
        if leaving:
            active.discard(id(node))
            done.add(id(node))
        elif _expands(node) and id(node) not in done:
            if id(node) in active:
                return _path(trail)
            if depth > _MAX_DEPTH:
                continue
            active.add(id(node))
            stack.append((node, trail, depth, True))
            stack.extend(
                (item, step, depth + 1, False)
                for item, step in reversed(_children(node, trail))
            )
    return None


def _pack(value: object, default: Callable[[Any], object]) -> bytes:
    # A fresh Packer per call: a Packer is not re-entrant, and a shared one
    # could be entered from another thread while `default` runs Python code.
    packer = Packer(
        default=default,
        strict_types=True,
        use_bin_type=True,
        buf_size=_BUFFER_SIZE,  # type: ignore[call-arg]  # missing from msgpack-types
    )
    try:
        return packer.pack(value)
    except _Rejected as exc:
        where = _locate(value, exc.value)
        at = f" at {where}" if where else ""
        msg = (
            f"Cannot serialize {_type_name(type(exc.value))!r} value{at}: {exc.reason}"
        )
        raise SerializationError(msg) from None
    except UnicodeEncodeError as exc:
        where = _locate(value, exc.object)
        at = f" at {where}" if where else ""
        msg = (
            f"Cannot serialize 'str' value{at}: it has a lone surrogate (no UTF-8 form)"
        )
        raise SerializationError(msg) from None
    except ValueError as exc:
        if "recursion limit" not in str(exc):  # pragma: no cover - needs 4 GiB
            raise SerializationError(f"Cannot serialize value: {exc}") from exc
        cycle = _find_cycle(value)
        if cycle is not None:
            msg = f"Cannot serialize a value that contains itself (at {cycle})"
        else:
            msg = f"Cannot serialize a value nested more than {_MAX_DEPTH} levels deep"
        raise SerializationError(msg) from None


# Decoding ------------------------------------------------------------------


def _decode_tzinfo(data: bytes, start: int) -> tzinfo:
    kind = data[start : start + 1]
    if kind == _TZ_ZONE:
        return ZoneInfo(data[start + 1 :].decode())
    (micros,) = _OFFSET.unpack_from(data, start + 1)
    offset = timedelta(microseconds=micros)
    if kind == _TZ_OFFSET:
        return timezone(offset)
    if kind == _TZ_NAMED:
        return timezone(offset, data[start + 9 :].decode("utf-8", "surrogatepass"))
    raise ValueError(f"unknown tzinfo kind {kind!r} in an encoded datetime")


def _decode_datetime(data: bytes) -> datetime:
    year, month, day, hour, minute, second, micros, fold = _DATETIME.unpack_from(data)
    tz = None
    if len(data) > _DATETIME.size:
        tz = _decode_tzinfo(data, _DATETIME.size)
    return datetime(year, month, day, hour, minute, second, micros, tz, fold=fold)


def _registered_tag(data: bytes) -> _Tag:
    name = data.decode()
    registered = BY_NAME.get(name)
    if registered is None:
        msg = (
            f"Cannot deserialize a value of registered type {name!r}: no class "
            "is registered under that name in this process; import the module "
            "that registers it, or, if the class was renamed or moved, register "
            f"it with pyobjects.register_type(cls, name={name!r})"
        )
        raise SerializationError(msg)
    return registered.decode_tag


_DECODERS: Final[dict[int, Callable[[bytes], object]]] = {
    _EXT_TUPLE: lambda _: _AS_TUPLE,
    _EXT_SET: lambda _: _AS_SET,
    _EXT_FROZENSET: lambda _: _AS_FROZENSET,
    _EXT_INT: lambda data: int.from_bytes(data, "big", signed=True),
    _EXT_DATETIME: _decode_datetime,
    _EXT_DATE: lambda data: date(*_DATE.unpack(data)),
    _EXT_DECIMAL: lambda data: Decimal(data.decode("ascii")),
    _EXT_UUID: lambda data: UUID(bytes=data),
    EXT_TYPE: _registered_tag,
}


def _ext_hook(code: int, data: bytes) -> object:
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise ValueError(f"unknown msgpack ext type {code} in an encoded value")
    try:
        return decoder(data)
    except struct.error as exc:
        raise ValueError(f"malformed msgpack ext type {code}: {exc}") from exc


def _list_hook(items: list[Any]) -> Any:
    if items and type(items[0]) is _Tag:
        return items[0].build(items[1:])
    return items


def _unpack(data: bytes, ext_hook: Callable[[int, bytes], object]) -> Any:
    return unpackb(data, strict_map_key=False, ext_hook=ext_hook, list_hook=_list_hook)


# Scalars msgpack packs natively never reach the ``default`` hook, so no Python
# code runs while the packer works on one: a single shared packer is safe for
# them (a fresh one per call costs more than packing a counter's value).
_pack_scalar: Final = Packer(strict_types=True, use_bin_type=True, autoreset=True).pack
_PLAIN_SCALARS: Final = frozenset({float, bool, type(None)})
_MIN_PACKED: Final = -(2**63)
_MAX_PACKED: Final = 2**64 - 1


# API -----------------------------------------------------------------------


def encode(value: object) -> bytes:
    """Encode *value* into bytes that `decode` turns back into an equal copy.

    Raises:
        SerializationError: If *value* holds an unsupported type (the message
            names it and where it is), a subclass of a supported type, a
            reference cycle, or nests too deep.
    """
    if type(value) is int:
        if _MIN_PACKED <= value <= _MAX_PACKED:
            return _pack_scalar(value)
    elif type(value) in _PLAIN_SCALARS:
        return _pack_scalar(value)
    return _pack(value, _default)


def decode(data: bytes) -> Any:
    """Decode bytes made by `encode`.

    Raises:
        ValueError: If *data* was not made by `encode`.
        SerializationError: If it holds a value of a registered type that
            this process does not register, or cannot build or migrate.
    """
    return unpackb(data, strict_map_key=False, ext_hook=_ext_hook, list_hook=_list_hook)


def decode_stored(data: bytes, build: Callable[[str, int, Any], object]) -> Any:
    """Decode like `decode`, registered values as ``build(name, version, state)``.

    For inspecting stored data in a process that need not know the classes
    (``pyobjects inspect``): nothing is migrated and no class is called.

    Raises:
        ValueError: If *data* was not made by `encode`.
    """

    def restore(name: str) -> _Tag:
        def build_items(items: list[Any]) -> object:
            if len(items) != 2 or type(items[0]) is not int:
                raise ValueError(f"malformed value of registered type {name!r}")
            return build(name, items[0], items[1])

        return _Tag(build_items)

    def ext_hook(code: int, data: bytes) -> object:
        if code == EXT_TYPE:
            return restore(data.decode())
        return _ext_hook(code, data)

    return _unpack(data, ext_hook)


def copy_value(value: Any, passthrough: tuple[type, ...] = ()) -> Any:
    """Copy *value* by value, as RPC passes arguments and results.

    The copy goes through the codec, so it fails exactly as storing *value*
    would. Objects whose exact type is in *passthrough* (immutable handles
    such as ids and stubs) are kept by reference wherever they are.

    Raises:
        SerializationError: As `encode`.
    """
    cls = type(value)
    # Immutable scalars come back from a round trip equal and of the same
    # type, so skip it. Non-ASCII str still goes through it: a lone
    # surrogate must fail here as it would inside a list.
    if (cls in _SCALARS or (cls is str and value.isascii()) or cls in passthrough) and (
        (cls is not bytes and cls is not str) or len(value) <= _FAST_LEN
    ):
        return value
    if not passthrough:
        return _unpack(_checked_size(_pack(value, _default)), _ext_hook)
    refs: list[object] = []

    def default(obj: object) -> object:
        if type(obj) in passthrough:
            refs.append(obj)
            return ExtType(_EXT_REF, (len(refs) - 1).to_bytes(4, "big"))
        return _default(obj)

    def ext_hook(code: int, data: bytes) -> object:
        if code == _EXT_REF:
            return refs[int.from_bytes(data, "big")]
        return _ext_hook(code, data)

    return _unpack(_checked_size(_pack(value, default)), ext_hook)


# Below this many bytes or characters a str or bytes surely encodes within
# MAX_RPC_BYTES (a UTF-8 character is at most 4 bytes), so no size check.
_FAST_LEN: Final = MAX_RPC_BYTES // 4 - 16


def _checked_size(data: bytes) -> bytes:
    if len(data) > MAX_RPC_BYTES:
        raise MessageTooLargeError(limit=MAX_RPC_BYTES, size=len(data))
    return data


def copy_args(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    passthrough: tuple[type, ...] = (),
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Copy call arguments by value, as `copy_value` does.

    Raises:
        SerializationError: As `encode`.
    """
    if not kwargs:
        for arg in args:
            cls = type(arg)
            if not (
                (
                    cls in _SCALARS
                    or (cls is str and arg.isascii())
                    or cls in passthrough
                )
                and ((cls is not bytes and cls is not str) or len(arg) <= _FAST_LEN)
            ):
                break
        else:
            return args, {}
    try:
        copied = copy_value([list(args), kwargs], passthrough)
    except SerializationError as exc:
        exc.add_note(
            "in the call's arguments: [0][i] is positional argument i, "
            "[1]['x'] is keyword argument x"
        )
        raise
    return tuple(copied[0]), copied[1]
