"""``DurableObjectNamespace``: one bound Durable Object class."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, cast, final

from pyobjects._aliases import camel_aliases
from pyobjects._ids import JURISDICTIONS, DurableObjectId, IdFactory

from ._object import DurableObject, ObjectT
from ._stub import DurableObjectStub

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["DurableObjectBinding", "DurableObjectNamespace"]

_SAFE_STORAGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")

LOCATION_HINTS = frozenset(
    {
        "wnam",
        "enam",
        "sam",
        "weur",
        "eeur",
        "apac",
        "apac-ne",
        "apac-se",
        "oc",
        "afr",
        "me",
    }
)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DurableObjectBinding:
    """A binding with options: ``bindings={"COUNTER": DurableObjectBinding(...)}``.

    ``unique_key`` is the namespace key: ids are derived from it and stored
    objects are found by it. It defaults to the binding name, so renaming a
    binding changes its ids; pin ``unique_key`` to rename safely (workerd's
    ``uniqueKey``). :meth:`wrangler` gives the key ``wrangler dev`` uses.
    """

    object_class: type[DurableObject[Any]]
    unique_key: str | None = None

    @classmethod
    def wrangler(
        cls,
        object_class: type[DurableObject[Any]],
        *,
        worker_name: str,
        class_name: str | None = None,
    ) -> DurableObjectBinding:
        """Bind *object_class* with the namespace key ``wrangler dev`` gives it.

        Wrangler (through Miniflare) keys a namespace by
        ``"<worker name>-<class name>"``, the worker's ``name`` and the
        binding's ``class_name`` in its config; *class_name* defaults to
        ``object_class.__name__``. Ids then equal those ``wrangler dev`` makes
        for the same names.
        """
        if not isinstance(cast("object", worker_name), str):
            raise TypeError(
                f"worker_name must be a str, not {type(worker_name).__name__}"
            )
        name = object_class.__name__ if class_name is None else class_name
        return cls(object_class=object_class, unique_key=f"{worker_name}-{name}")


def storage_name(unique_key: str) -> str:
    """Return the backend namespace for a unique key (file-name safe)."""
    if _SAFE_STORAGE_NAME.fullmatch(unique_key) and unique_key not in (".", ".."):
        return unique_key
    return "ns-" + hashlib.sha256(unique_key.encode()).hexdigest()[:40]


@final
@camel_aliases("id_from_name", "new_unique_id", "id_from_string", "get_by_name")
class DurableObjectNamespace(Generic[ObjectT]):
    """A Durable Object class bound in a runtime (``env.COUNTER``).

    Hands out ids and stubs; making either does nothing remote. Built by the
    runtime; the constructor is private. Mirrors
    ``DurableObjectNamespace`` in Workers.

    The type parameter is the bound class: a ``DurableObjectNamespace[Cart]``
    hands out ``DurableObjectStub[Cart]`` stubs. Declare it in a typed
    ``env`` (see the typing guide).
    """

    __slots__ = (
        "_binding_name",
        "_ids",
        "_jurisdiction",
        "_runtime",
        "_storage_name",
        "object_class",
    )

    def __init__(
        self,
        runtime: Runtime[Any],
        binding_name: str,
        object_class: type[ObjectT],
        unique_key: str,
        *,
        jurisdiction: str | None = None,
        parent: DurableObjectNamespace[ObjectT] | None = None,
    ) -> None:
        self._runtime = runtime
        self._binding_name = binding_name
        self.object_class: type[ObjectT] = object_class
        self._jurisdiction = jurisdiction
        if parent is None:
            self._ids = IdFactory(unique_key)
            self._storage_name = storage_name(unique_key)
        else:
            self._ids = parent._ids
            self._storage_name = parent._storage_name

    def id_from_name(self, name: str) -> DurableObjectId:
        """Return the id for *name*: the same name always gives the same id."""
        return self._ids.from_name(name, jurisdiction=self._jurisdiction)

    def new_unique_id(self, *, jurisdiction: str | None = None) -> DurableObjectId:
        """Return a new random id (``id.name is None``)."""
        if jurisdiction is None:
            jurisdiction = self._jurisdiction
        elif self._jurisdiction is not None and jurisdiction != self._jurisdiction:
            raise ValueError(
                f"new_unique_id(jurisdiction={jurisdiction!r}) on a namespace "
                f"restricted to jurisdiction {self._jurisdiction!r}"
            )
        return self._ids.new_unique(jurisdiction=jurisdiction)

    def id_from_string(self, hex_id: str) -> DurableObjectId:
        """Parse an id's 64 hex digits, checking it belongs to this namespace.

        Raises:
            InvalidIdError: Bad length or hex, or an id of another namespace.
        """
        return self._ids.from_string(hex_id, jurisdiction=self._jurisdiction)

    def get(
        self, object_id: DurableObjectId, *, location_hint: str | None = None
    ) -> DurableObjectStub[ObjectT]:
        """Return a stub for *object_id* (the object is created on first call).

        ``location_hint`` is accepted for compatibility and has no effect in
        one process; an unknown hint raises ``ValueError``.
        """
        if not isinstance(object_id, DurableObjectId):
            raise TypeError(
                f"get() takes a DurableObjectId, not {type(object_id).__name__}; "
                "use id_from_name(), id_from_string() or get_by_name()"
            )
        if location_hint is not None and location_hint not in LOCATION_HINTS:
            raise ValueError(
                f"unknown location_hint {location_hint!r}; "
                f"expected one of {sorted(LOCATION_HINTS)}"
            )
        if (
            self._jurisdiction is not None
            and object_id.jurisdiction != self._jurisdiction
        ):
            raise TypeError(
                "get called on jurisdictional subnamespace with an ID from a "
                "different jurisdiction"
            )
        if not self._ids.issued(object_id):
            # An id made by another namespace fails this MAC check.
            self._ids.from_string(str(object_id), jurisdiction=object_id.jurisdiction)
        return DurableObjectStub(self, object_id)

    def get_by_name(
        self, name: str, *, location_hint: str | None = None
    ) -> DurableObjectStub[ObjectT]:
        """Shorthand for ``get(id_from_name(name))``."""
        return self.get(self.id_from_name(name), location_hint=location_hint)

    def jurisdiction(self, name: str | None) -> DurableObjectNamespace[ObjectT]:
        """Return a sub-namespace whose ids all belong to jurisdiction *name*.

        The same name gives different ids in different jurisdictions.
        ``jurisdiction(None)`` returns the top-level namespace.
        """
        if name is None:
            return self
        if name not in JURISDICTIONS:
            raise ValueError(
                f"unknown jurisdiction {name!r}; "
                f"expected one of {sorted(JURISDICTIONS)}"
            )
        return DurableObjectNamespace(
            self._runtime,
            self._binding_name,
            self.object_class,
            "",
            jurisdiction=name,
            parent=self,
        )

    def __repr__(self) -> str:
        suffix = f" jurisdiction={self._jurisdiction}" if self._jurisdiction else ""
        return f"<DurableObjectNamespace {self._binding_name}{suffix}>"
