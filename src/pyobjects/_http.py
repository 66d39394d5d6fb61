"""Small Fetch-like ``Request``, ``Response`` and ``Headers`` types.

They carry what ``stub.fetch()`` and a Durable Object's ``fetch()`` handler
exchange: a method, an absolute URL, case-insensitive headers and a body held
in memory. Bodies are read with ``await r.text()``, ``await r.json()`` or
``await r.bytes()`` as in the Fetch API (async so that streamed bodies can come
later without changing user code).
"""

from __future__ import annotations

import json as _json
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import (
    Any,
    ClassVar,
    Protocol,
    Self,
    TypeAlias,
    cast,
    final,
    overload,
)
from urllib.parse import urlsplit

from ._aliases import camel_aliases
from ._websocket import NEW, WebSocket

__all__ = ["Headers", "HeadersInit", "Request", "Response"]

HeadersInit: TypeAlias = "Headers | Mapping[str, str] | Iterable[tuple[str, str]]"
BodyInit: TypeAlias = "bytes | bytearray | memoryview | str | None"


@final
@camel_aliases("get_set_cookie")
class Headers:
    """Case-insensitive HTTP headers that keep repeated fields.

    ``headers["content-type"]`` returns the values of a repeated field joined
    by ``", "`` (like the Fetch API's ``get``); :meth:`get_all` returns them
    one by one. Names are stored lowercase.
    """

    __slots__ = ("_items",)

    def __init__(self, init: HeadersInit | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        if init is None:
            return
        pairs: Iterable[tuple[str, str]]
        if isinstance(init, Headers):
            pairs = init._items
        elif isinstance(init, Mapping):
            pairs = init.items()
        else:
            pairs = init
        for name, value in pairs:
            self.append(name, value)

    @staticmethod
    def _check(name: str, value: str) -> tuple[str, str]:
        if not isinstance(cast("object", name), str) or not isinstance(
            cast("object", value), str
        ):
            raise TypeError(
                f"header names and values must be str, got {name!r}: {value!r}"
            )
        if not name or any(c in name for c in " \t\r\n:"):
            raise ValueError(f"invalid header name: {name!r}")
        if "\r" in value or "\n" in value or "\x00" in value:
            raise ValueError(f"invalid header value for {name!r}: {value!r}")
        return name.lower(), value.strip(" \t")

    def append(self, name: str, value: str) -> None:
        """Add a value, keeping earlier values of the same field."""
        self._items.append(self._check(name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of the field with *value*."""
        key, value = self._check(name, value)
        self._items = [(k, v) for k, v in self._items if k != key]
        self._items.append((key, value))

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the field's values joined by ``", "``, or *default*."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        """Return every value of the field, in order."""
        key = name.lower()
        return [v for k, v in self._items if k == key]

    def delete(self, name: str) -> None:
        """Remove every value of the field."""
        key = name.lower()
        self._items = [(k, v) for k, v in self._items if k != key]

    def has(self, name: str) -> bool:
        """True if the field is present (``headers.has()`` in Workers)."""
        return name in self

    def items(self) -> list[tuple[str, str]]:
        """Return ``(lowercase name, value)`` pairs in order, repeats included."""
        return list(self._items)

    def keys(self) -> list[str]:
        """Return the distinct lowercase names, sorted (as ``headers.keys()``)."""
        return [name for name, _ in self.entries()]

    def values(self) -> list[str]:
        """Return the values in :meth:`entries` order (as ``headers.values()``)."""
        return [value for _, value in self.entries()]

    def entries(self) -> list[tuple[str, str]]:
        """Return ``(name, value)`` pairs the way the Fetch API iterates them.

        Names are sorted and each field's values joined by ``", "``, except
        ``set-cookie``, whose values stay separate (``headers.entries()`` in
        Workers). :meth:`items` keeps the order and the repeats instead.
        """
        out: list[tuple[str, str]] = []
        for name in sorted(set(self)):
            if name == "set-cookie":
                out.extend((name, v) for v in self.get_all(name))
            else:
                out.append((name, ", ".join(self.get_all(name))))
        return out

    def get_set_cookie(self) -> list[str]:
        """Return each ``Set-Cookie`` value (``headers.getSetCookie()``)."""
        return self.get_all("set-cookie")

    def copy(self) -> Headers:
        """Return an independent copy."""
        new = Headers()
        new._items = list(self._items)
        return new

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        if name.lower() not in self:
            raise KeyError(name)
        self.delete(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k == name.lower() for k, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for k, _ in self._items:
            seen.setdefault(k)
        return iter(seen)

    def __len__(self) -> int:
        return len({k for k, _ in self._items})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return sorted(self._items) == sorted(other._items)
        return NotImplemented

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _body_bytes(body: BodyInit) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(
        f"body must be bytes, str or None, not {type(body).__name__}; "
        "use Response.from_json() for JSON"
    )


def _checked_method(method: str) -> str:
    """*method* checked, in upper case."""
    if not isinstance(cast("object", method), str) or not method.isalpha():
        raise ValueError(f"invalid HTTP method: {method!r}")
    return method.upper()


def _check_body(method: str, body: bytes) -> None:
    if body and method in ("GET", "HEAD"):
        raise ValueError(f"a {method} request cannot have a body")


class _Body:
    __slots__ = ()
    _body: bytes

    async def bytes(self) -> bytes:
        """Return the body as bytes."""
        return self._body

    async def text(self) -> str:
        """Return the body decoded as UTF-8."""
        return self._body.decode()


@final
class Request(_Body):
    """An HTTP request: ``Request(url, *, method="GET", headers=None, body=None)``.

    The URL must be absolute (``https://host/path``): Durable Object fetches
    have required that since 2021 (``durable_object_fetch_requires_full_url``);
    the host does not need to resolve.
    """

    __slots__ = ("_body", "headers", "method", "url")

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: HeadersInit | None = None,
        body: BodyInit = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(
                f"Request URL must be absolute (scheme://host/...), got {url!r}"
            )
        self.url: str = url
        self.method: str = _checked_method(method)
        self.headers: Headers = Headers(headers)
        self._body = _body_bytes(body)
        _check_body(self.method, self._body)

    @classmethod
    def _from_edge(cls, url: str, method: str, headers: Headers, body: bytes) -> Self:
        """A request of the HTTP edge, which built *url* and checked *headers*.

        The URL is absolute by construction, so it is not parsed again (a
        ``urlsplit()`` per request, for a URL that varies); the method and the
        body get the checks of ``Request()``.
        """
        method = _checked_method(method)
        _check_body(method, body)
        new = object.__new__(cls)
        new.url = url
        new.method = method
        new.headers = headers
        new._body = body
        return new

    async def json(self) -> Any:
        """Return the body parsed as JSON."""
        return _json.loads(self._body)

    @property
    def path(self) -> str:
        """The URL's path (``/`` when empty)."""
        return urlsplit(self.url).path or "/"

    @property
    def query(self) -> str:
        """The URL's query string, without ``?``."""
        return urlsplit(self.url).query

    def copy(self) -> Self:
        """Return an independent copy (what crosses into an object)."""
        new = object.__new__(type(self))
        new.url = self.url
        new.method = self.method
        new.headers = self.headers.copy()
        new._body = self._body
        return new

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


def check_websocket(websocket: object) -> None:
    """Raise unless *websocket* is an end of a pair that can go to the client."""
    if not isinstance(websocket, WebSocket):
        raise TypeError(
            "Response(websocket=...) takes the client end of a WebSocketPair "
            f"(client, server = WebSocketPair()), not {type(websocket).__name__}"
        )
    if websocket._mode != NEW:
        raise TypeError(
            "Response(websocket=...) got a WebSocket that was already accepted "
            "(or returned in a response): return the client end of the pair and "
            "accept the server end (client, server = WebSocketPair(); "
            "ctx.accept_websocket(server); Response(status=101, websocket=client))"
        )


# The content type of a str body when none is given (checked once, here).
_TEXT_PLAIN = Headers._check("content-type", "text/plain;charset=UTF-8")

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _json_response(
    data: Any,
    status: int = 200,
    *,
    status_text: str = "",
    headers: HeadersInit | None = None,
) -> Response:
    response = Response(
        _json.dumps(data).encode(),
        status,
        status_text=status_text,
        headers=headers,
    )
    if "content-type" not in response.headers:
        response.headers.set("content-type", "application/json")
    return response


class JsonConstructor(Protocol):
    """The signature of ``Response.json(data, status=200, ...)`` on the class."""

    def __call__(
        self,
        data: Any,
        status: int = 200,
        *,
        status_text: str = "",
        headers: HeadersInit | None = None,
    ) -> Response:
        """Build a JSON response."""
        ...


@final
class _JsonMember:
    """``Response.json``: a constructor on the class, a body reader on instances.

    Workers has both: ``Response.json(data)`` is the static constructor and
    ``await response.json()`` parses a body. Python has one namespace for
    both, so this descriptor picks by how it is reached.
    """

    __slots__ = ()

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> JsonConstructor: ...
    @overload
    def __get__(
        self, instance: Response, owner: type[Any]
    ) -> Callable[[], Coroutine[Any, Any, Any]]: ...
    def __get__(
        self, instance: Response | None, owner: type[Any]
    ) -> JsonConstructor | Callable[[], Coroutine[Any, Any, Any]]:
        if instance is None:
            return _json_response
        body = instance._body

        async def json() -> Any:
            """Return the body parsed as JSON."""
            return _json.loads(body)

        return json


@final
class Response(_Body):
    """An HTTP response with a status, headers and a body.

    ``Response(body=None, status=200, *, status_text="", headers=None,
    websocket=None)``, as in Python Workers (``web_socket=`` is accepted for
    ``websocket=``); a ``websocket`` is only allowed with status 101.
    ``Response.json(data, status=200, ...)`` builds a JSON response, while
    ``await response.json()`` reads one.
    """

    __slots__ = ("_body", "headers", "status", "status_text", "websocket")

    json: ClassVar[_JsonMember] = _JsonMember()

    def __init__(
        self,
        body: BodyInit = None,
        status: int = 200,
        *,
        status_text: str = "",
        headers: HeadersInit | None = None,
        websocket: object | None = None,
        web_socket: object | None = None,
    ) -> None:
        if web_socket is not None:
            if websocket is not None:
                raise TypeError(
                    "Response() takes websocket= or its Python Workers spelling "
                    "web_socket=, not both"
                )
            websocket = web_socket
        if not isinstance(cast("object", status), int) or isinstance(status, bool):
            raise TypeError(f"status must be an int, not {type(status).__name__}")
        if not isinstance(cast("object", status_text), str):
            raise TypeError(
                f"status_text must be a str, not {type(status_text).__name__}"
            )
        if "\r" in status_text or "\n" in status_text:
            raise ValueError(f"status_text cannot contain line breaks: {status_text!r}")
        if websocket is not None:
            if status != 101:
                raise ValueError("a Response with a websocket must have status 101")
            check_websocket(websocket)
        elif not 200 <= status <= 599:
            raise ValueError(f"status must be in 200..599, got {status}")
        self.status: int = status
        self.status_text: str = status_text
        self.websocket: object | None = websocket
        self.headers: Headers = Headers(headers)
        self._body = _body_bytes(body)
        if isinstance(body, str) and (
            headers is None or "content-type" not in self.headers
        ):
            self.headers._items.append(_TEXT_PLAIN)

    @classmethod
    def from_json(
        cls,
        obj: Any,
        *,
        status: int = 200,
        status_text: str = "",
        headers: HeadersInit | None = None,
    ) -> Response:
        """Build a JSON response (the same as ``Response.json(obj)``)."""
        return _json_response(obj, status, status_text=status_text, headers=headers)

    @staticmethod
    def redirect(url: str, status: int = 302) -> Response:
        """Build a redirect to *url* (``Response.redirect()`` in Workers).

        Raises:
            ValueError: If *url* is not absolute, or *status* is not one of
                301, 302, 303, 307, 308 (a ``RangeError`` in Workers).
        """
        if not isinstance(cast("object", url), str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(
                f"Response.redirect() needs an absolute URL (scheme://host/...), "
                f"got {url!r}"
            )
        if status not in _REDIRECT_STATUSES:
            raise ValueError(
                f"Response.redirect() status must be 301, 302, 303, 307 or 308, "
                f"got {status!r}"
            )
        return Response(status=status, headers={"location": url})

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status <= 299

    @classmethod
    def _upgrade(cls, headers: HeadersInit | None, websocket: object) -> Response:
        """A 101 response carrying any socket end the edge can bridge.

        For pyobjects itself (a cluster node bridging to another node's
        object): user code must pass a ``WebSocketPair`` end to ``Response()``,
        which checks it.
        """
        new = object.__new__(cls)
        new.status = 101
        new.status_text = ""
        new.headers = Headers(headers)
        new._body = b""
        new.websocket = websocket
        return new

    def copy(self) -> Response:
        """Return an independent copy (what crosses out of an object)."""
        new = object.__new__(Response)
        new.status = self.status
        new.status_text = self.status_text
        new.headers = self.headers.copy()
        new._body = self._body
        new.websocket = self.websocket
        return new

    def __repr__(self) -> str:
        return f"<Response {self.status}>"
