"""Pieces shared by the HTTP and WebSocket sides of :mod:`pyobjects.asgi`.

ASGI type aliases, turning an ASGI scope into a :class:`~pyobjects.Request`,
and turning a :class:`~pyobjects.Response` into ASGI messages.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeAlias, final
from urllib.parse import quote

from ._http import Headers, Response

__all__ = [
    "TOO_LARGE",
    "BadRequestError",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "content_length",
    "plain",
    "read_body",
    "refuse_upgrade",
    "request_parts",
    "response_messages",
    "send_quietly",
    "send_response",
    "trusted_headers",
]

logger = logging.getLogger("pyobjects.asgi")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]

_HOST_RE = re.compile(
    r"[A-Za-z0-9._~-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)
_NAME_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_BAD_VALUE_RE = re.compile(rb"[\r\n\x00]")
# Characters a path may hold unescaped (RFC 3986 pchar plus "/" and "%").
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class BadRequestError(ValueError):
    """The client's request cannot become a :class:`Request` (answered 400)."""


@final
class _TooLarge:
    __slots__ = ()


TOO_LARGE = _TooLarge()
"""What :func:`read_body` returns when the body exceeds the limit."""


# -- request building -----------------------------------------------------------


def request_parts(scope: Scope) -> tuple[str, Headers]:
    """Return the absolute URL and the headers the worker sees.

    ``ws``/``wss`` become ``http``/``https`` as in Workers. An app mounted
    under a prefix (the ASGI ``root_path``: Starlette's ``Mount``, uvicorn's
    ``--root-path``) sees URLs relative to its mount point, and the prefix in
    an ``X-Forwarded-Prefix`` header, as behind a proxy that strips one.

    Raises:
        BadRequestError: For a malformed ``Host`` or header.
    """
    headers = trusted_headers(scope["headers"])
    scheme = str(scope.get("scheme") or "http")
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    host = headers.get("host")
    if host is None:
        server = scope.get("server")
        if server is None:
            host = "localhost"
        else:
            name, port = server[0], server[1]
            name = f"[{name}]" if ":" in str(name) else str(name)
            host = name if port is None else f"{name}:{port}"
    elif _HOST_RE.fullmatch(host) is None:
        raise BadRequestError(f"invalid Host header: {host!r}")
    raw_path = scope.get("raw_path")
    if raw_path:
        path = bytes(raw_path).decode("latin-1").partition("?")[0]
    else:
        path = quote(str(scope.get("path") or "/"), safe=_PATH_SAFE)
    if not path.startswith("/"):
        raise BadRequestError(f"invalid request target: {path!r}")
    root = str(scope.get("root_path") or "").rstrip("/")
    if root:
        path = _below(root, path, str(scope.get("path") or "/"))
        headers.set("x-forwarded-prefix", root)
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    url = f"{scheme}://{host}{path}"
    return (f"{url}?{query}" if query else url), headers


def _below(root: str, raw: str, decoded: str) -> str:
    """Return the raw path *raw* without the mount prefix *root*.

    The raw path keeps the client's escapes, so it is cut where the escaped
    prefix ends. When the raw path does not start with the prefix (a server
    that adds ``root_path`` to ``path`` only, as uvicorn's ``--root-path``
    does behind a proxy that stripped it, or a prefix escaped differently),
    the decoded ``path`` is used instead.
    """
    prefix = quote(root, safe=_PATH_SAFE)
    if raw == prefix or raw.startswith(prefix + "/"):
        return raw[len(prefix) :] or "/"
    if decoded == root or decoded.startswith(root + "/"):
        return quote(decoded[len(root) :] or "/", safe=_PATH_SAFE)
    return raw  # not below the prefix at all: leave it whole


def trusted_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Build :class:`Headers` from an ASGI header list.

    The hot path of every request: one C-level regex check per field instead
    of ``Headers.append``'s Python checks, with the same outcome for what an
    HTTP server can deliver (token names, no CR/LF/NUL in values).

    Raises:
        BadRequestError: For a malformed name or value.
    """
    items = []
    for name, value in raw:
        if _NAME_RE.fullmatch(name) is None or _BAD_VALUE_RE.search(value):
            raise BadRequestError(f"invalid header: {bytes(name)!r}: {bytes(value)!r}")
        items.append(
            (name.decode("latin-1").lower(), value.decode("latin-1").strip(" \t"))
        )
    headers = Headers()
    headers._items = items  # already checked and normalised as Headers does
    return headers


def content_length(headers: Headers) -> int | None:
    """Return the declared body length, if any.

    Raises:
        BadRequestError: If the header is not one decimal number.
    """
    value = headers.get("content-length")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise BadRequestError(f"invalid Content-Length: {value!r}")
    return int(value)


async def read_body(receive: Receive, limit: int | None) -> bytes | _TooLarge | None:
    """Read the request body; ``None`` if the client left, :data:`TOO_LARGE` if over."""
    body = bytearray()
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            return None
        if kind != "http.request":  # pragma: no cover - bad server
            continue
        chunk = message.get("body") or b""
        if limit is not None and len(body) + len(chunk) > limit:
            return TOO_LARGE
        body += chunk
        if not message.get("more_body", False):
            return bytes(body)


async def refuse_upgrade(websocket: object) -> None:
    """Tell the object side that its WebSocket will never be connected."""
    disconnect = getattr(websocket, "_disconnect", None)
    if disconnect is None:
        return
    try:
        result = disconnect()
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.debug("the refused WebSocket failed to disconnect", exc_info=True)


# -- responses --------------------------------------------------------------------


def plain(status: int, text: str, **headers: str) -> Response:
    return Response(
        text,
        status=status,
        headers={"content-type": "text/plain; charset=utf-8", **headers},
    )


_NO_BODY = frozenset({204, 304})
_FRAMING = frozenset({"content-length", "transfer-encoding"})


def response_messages(
    response: Response, *, head: bool, kind: str = "http.response"
) -> tuple[Message, Message]:
    """Build the ASGI start and body messages for *response*.

    The body is sent whole with its ``Content-Length`` (a ``HEAD`` response
    keeps the worker's own ``Content-Length`` if it set one).

    Raises:
        UnicodeEncodeError: If a header does not encode as Latin-1.
    """
    status = response.status
    body: bytes = response._body
    headers = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
        if name not in _FRAMING
    ]
    if status in _NO_BODY:
        body = b""
    else:
        length = str(len(body))
        if head:
            length = response.headers.get("content-length") or length
            body = b""
        headers.append((b"content-length", length.encode("latin-1")))
    start = {"type": f"{kind}.start", "status": status, "headers": headers}
    return start, {"type": f"{kind}.body", "body": body}


async def send_response(
    send: Send, response: Response, *, head: bool, kind: str = "http.response"
) -> None:
    """Send *response* (one of pyobjects' own, so its headers encode)."""
    await send_quietly(send, *response_messages(response, head=head, kind=kind))


async def send_quietly(send: Send, *messages: Message) -> None:
    try:
        for message in messages:
            await send(message)
    except OSError:
        # The client disconnected; the server drops the rest.
        logger.debug("the client disconnected before the response was sent")
