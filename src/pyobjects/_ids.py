r"""Durable Object ids: name hashing, unique ids and hex parsing.

An id is 32 bytes, shown as 64 lowercase hex digits: ``first16 || mac16``.
Without a jurisdiction the scheme is bit-for-bit workerd's local one
(``ActorIdFactoryImpl``), so an id made here equals the id ``wrangler dev``
makes for the same unique key and name:

- ``key = SHA-256(utf8(unique_key))``
- ``id_from_name(name)``: ``first16 = HMAC-SHA256(key, utf8(name))[:16]``
- ``new_unique_id()``: ``first16 = os.urandom(16)``
- both: ``mac16 = HMAC-SHA256(key, first16)[:16]``

``id_from_string`` recomputes ``mac16``, which ties an id to its namespace.

Jurisdictions are a pyobjects choice (production Cloudflare encodes them
with its own secret; local workerd refuses them). Each jurisdiction ``j``
gets its own key, ``SHA-256(utf8(unique_key) + b"\x00jurisdiction=" +
utf8(j))``, used for both HMACs. So the same name gives a different id in
each jurisdiction, and an id string reveals its jurisdiction: the key whose
MAC matches. A top-level namespace accepts ids of every jurisdiction; a
jurisdiction subnamespace accepts only its own.
"""

from __future__ import annotations

import hashlib
import os
import typing
from typing import Final, NoReturn

from ._aliases import camel_aliases
from ._errors import InvalidIdError

__all__ = ["JURISDICTIONS", "DurableObjectId", "IdFactory"]

JURISDICTIONS: Final[frozenset[str]] = frozenset(
    {"eu", "fedramp", "fedramp-high", "us"}
)

_BAD_HEX: Final = "Invalid Durable Object ID: must be 64 hex digits"
_BAD_MAC: Final = "Durable Object ID is not valid for this namespace."
# Names cached per factory; cleared when full, which keeps it O(1) and bounded.
_NAME_CACHE_SIZE: Final = 1024
_Pads = tuple["hashlib._Hash", "hashlib._Hash"]


@typing.final
@camel_aliases("to_string")
class DurableObjectId:
    """The id of one Durable Object in a namespace (Cloudflare's ``DurableObjectId``).

    Immutable and hashable; two ids are equal when their 32 bytes are, whatever
    their ``name``. Ids come from a namespace (``id_from_name``,
    ``new_unique_id``, ``id_from_string``); the constructor is private.
    """

    # One slot holding (raw, hex, name, jurisdiction, issuer): every extra
    # slot costs an object.__setattr__ call in _make, which runs once per
    # id_from_name. The issuer (the namespace key that made the id, or None)
    # lets a namespace skip re-checking the MAC of ids it made itself.
    __slots__ = ("_fields",)

    _fields: tuple[bytes, str, str | None, str | None, bytes | None]

    def __init__(self) -> None:
        raise TypeError(
            "DurableObjectId cannot be created directly; use a namespace's "
            "id_from_name(), new_unique_id() or id_from_string()"
        )

    @classmethod
    def _make(
        cls,
        raw: bytes,
        *,
        name: str | None,
        jurisdiction: str | None,
        issuer: bytes | None = None,
    ) -> DurableObjectId:
        """Build an id from its 32 bytes (private: only `IdFactory` calls this)."""
        self = object.__new__(cls)
        # The hex is computed once here: str(id) runs on every stub call and log.
        object.__setattr__(
            self, "_fields", (raw, raw.hex(), name, jurisdiction, issuer)
        )
        return self

    @property
    def name(self) -> str | None:
        """The name given to ``id_from_name``, else ``None`` (``id.name``)."""
        return self._fields[2]

    @property
    def jurisdiction(self) -> str | None:
        """The jurisdiction the id belongs to, else ``None`` (``id.jurisdiction``)."""
        return self._fields[3]

    def to_string(self) -> str:
        """Return the 64 lowercase hex digits (Cloudflare's ``id.toString()``)."""
        return self._fields[1]

    def equals(self, other: object) -> bool:
        """Tell whether *other* is the same id (Cloudflare's ``id.equals()``)."""
        return type(other) is DurableObjectId and self._fields[0] == other._fields[0]

    def __str__(self) -> str:
        return self._fields[1]

    def __repr__(self) -> str:
        _, hex_, name, jurisdiction, _ = self._fields
        extra = ""
        if name is not None:
            extra += f", name={name!r}"
        if jurisdiction is not None:
            extra += f", jurisdiction={jurisdiction!r}"
        return f"DurableObjectId({hex_!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if type(other) is DurableObjectId:
            return self._fields[0] == other._fields[0]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields[0])

    # Hidden from type checkers, so that assigning an attribute stays a static
    # error (a declared __setattr__ would make mypy accept any assignment).
    if not typing.TYPE_CHECKING:

        def __setattr__(self, attr: str, value: object) -> NoReturn:
            raise AttributeError(f"DurableObjectId is immutable; cannot set {attr!r}")

        def __delattr__(self, attr: str) -> NoReturn:
            msg = f"DurableObjectId is immutable; cannot delete {attr!r}"
            raise AttributeError(msg)

    def __reduce__(self) -> tuple[object, tuple[bytes, str | None, str | None]]:
        # Pickle and copy go through _make: the default protocol would call
        # the refused __setattr__.
        raw, _, name, jurisdiction, _ = self._fields
        return (_restore, (raw, name, jurisdiction))


def _restore(raw: bytes, name: str | None, jurisdiction: str | None) -> DurableObjectId:
    """Rebuild a pickled id."""
    return DurableObjectId._make(raw, name=name, jurisdiction=jurisdiction)


def _exact_str(value: object, what: str) -> str:
    """Return *value* as a plain ``str``, or refuse a non-string."""
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"{what} must be a str, not {type(value).__name__}")


def _parse_hex(text: str) -> bytes:
    """Decode 64 hex digits (either case) into 32 bytes."""
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise InvalidIdError(_BAD_HEX) from None
        # fromhex skips whitespace, so the byte count is checked as well.
        if len(raw) == 32:
            return raw
    raise InvalidIdError(_BAD_HEX)


def _prepare(key: bytes) -> _Pads:
    """Hash the HMAC-SHA256 inner and outer pads of *key* once (RFC 2104).

    Copying the two prepared SHA-256 states costs about half of
    ``hmac.new(...).copy()``, whose Python wrapper dominates at this size.
    """
    block = key.ljust(64, b"\x00")  # keys here are 32-byte digests: no pre-hash
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


def _hmac16(pads: _Pads, message: bytes) -> bytes:
    """Return the first 16 bytes of HMAC-SHA256 over *message*."""
    inner = pads[0].copy()
    inner.update(message)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()[:16]


class IdFactory:
    """Make and check the ids of one namespace (workerd's ``ActorIdFactory``).

    *unique_key* identifies the namespace; miniflare uses
    ``"<worker name>-<class name>"``. Ids depend only on it, so they are stable
    across restarts.
    """

    __slots__ = ("_by_name", "_issuer", "_pads")

    def __init__(self, unique_key: str) -> None:
        base = unique_key.encode()
        self._issuer = hashlib.sha256(base).digest()
        self._pads: dict[str | None, _Pads] = {None: _prepare(self._issuer)}
        for jurisdiction in sorted(JURISDICTIONS):
            salt = b"\x00jurisdiction=" + jurisdiction.encode()
            self._pads[jurisdiction] = _prepare(hashlib.sha256(base + salt).digest())
        self._by_name: dict[tuple[str, str | None], DurableObjectId] = {}

    def _pads_for(self, jurisdiction: str | None) -> _Pads:
        try:
            return self._pads[jurisdiction]
        except (KeyError, TypeError):
            valid = ", ".join(repr(j) for j in sorted(JURISDICTIONS))
            msg = f"Unknown jurisdiction {jurisdiction!r}; valid ones are {valid}"
            raise ValueError(msg) from None

    def from_name(
        self, name: str, *, jurisdiction: str | None = None
    ) -> DurableObjectId:
        """Return the id for *name*, the same on every call (``idFromName``).

        Raises:
            TypeError: If *name* is not a ``str``.
            ValueError: If *name* has a lone surrogate (no UTF-8 form), or
                *jurisdiction* is unknown.
        """
        if type(name) is not str:
            name = _exact_str(name, "Durable Object name")
        pads = self._pads_for(jurisdiction)
        key = (name, jurisdiction)
        cached = self._by_name.get(key)
        if cached is not None:
            return cached
        try:
            encoded = name.encode()
        except UnicodeEncodeError as exc:
            msg = f"Durable Object name {name!r} cannot be encoded as UTF-8"
            raise ValueError(msg) from exc
        first16 = _hmac16(pads, encoded)
        raw = first16 + _hmac16(pads, first16)
        made = DurableObjectId._make(
            raw, name=name, jurisdiction=jurisdiction, issuer=self._issuer
        )
        if len(self._by_name) >= _NAME_CACHE_SIZE:
            self._by_name.clear()
        self._by_name[key] = made
        return made

    def new_unique(self, *, jurisdiction: str | None = None) -> DurableObjectId:
        """Return a new random id (``newUniqueId``)."""
        pads = self._pads_for(jurisdiction)
        first16 = os.urandom(16)
        raw = first16 + _hmac16(pads, first16)
        return DurableObjectId._make(
            raw, name=None, jurisdiction=jurisdiction, issuer=self._issuer
        )

    def issued(self, object_id: DurableObjectId) -> bool:
        """Tell cheaply whether *object_id* was made (or checked) with this key."""
        return object_id._fields[4] == self._issuer

    def from_string(
        self, text: str, *, jurisdiction: str | None = None
    ) -> DurableObjectId:
        """Parse and check a 64-hex-digit id (``idFromString``).

        With *jurisdiction* ``None`` (a top-level namespace) an id of any
        jurisdiction is accepted, and the result's ``jurisdiction`` says which;
        otherwise only ids of that jurisdiction are. Either case of hex is
        accepted. The result has no ``name``, as in Cloudflare.

        Raises:
            InvalidIdError: If *text* is not 64 hex digits, or its MAC does not
                match this namespace (and jurisdiction).
            ValueError: If *jurisdiction* is unknown.
        """
        if type(text) is not str:
            text = _exact_str(text, "Durable Object ID")
        pads = self._pads_for(jurisdiction)
        raw = _parse_hex(text)
        first16, mac16 = raw[:16], raw[16:]
        if jurisdiction is not None:
            if _hmac16(pads, first16) != mac16:
                raise InvalidIdError(_BAD_MAC)
            return DurableObjectId._make(
                raw, name=None, jurisdiction=jurisdiction, issuer=self._issuer
            )
        for candidate, candidate_pads in self._pads.items():
            if _hmac16(candidate_pads, first16) == mac16:
                return DurableObjectId._make(
                    raw, name=None, jurisdiction=candidate, issuer=self._issuer
                )
        raise InvalidIdError(_BAD_MAC)
