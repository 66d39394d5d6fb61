"""``pyobjects.fetch``: outgoing HTTP requests, as ``fetch()`` in Workers.

Built on httpx (the ``fetch`` extra: ``pip install 'pyobjects[fetch]'``),
which runs on every anyio backend. Called inside a Durable Object, the
request waits at the output gate first: it leaves only once the writes the
object made before it are durable, as in workerd, so a remote service never
hears of a write that could still be lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anyio.lowlevel

from ._errors import FetchError
from ._http import HeadersInit, Request, Response
from ._owner import current_owner

if TYPE_CHECKING:
    import httpx

__all__ = ["fetch"]

RedirectMode = Literal["follow", "manual", "error"]
_REDIRECTS = ("follow", "manual", "error")
# httpx hands back the decoded body, so these headers no longer describe it.
_DECODED = frozenset({"content-encoding", "content-length"})


async def fetch(
    resource: Request | str,
    *,
    method: str | None = None,
    headers: HeadersInit | None = None,
    body: bytes | str | None = None,
    redirect: RedirectMode = "follow",
    client: httpx.AsyncClient | None = None,
) -> Response:
    """Send an HTTP request and return the :class:`Response` (``fetch()`` in Workers).

    Takes a :class:`Request`, or an absolute URL plus ``method``, ``headers``
    and ``body``, like ``stub.fetch()``. ``redirect`` is the Fetch API's:
    ``"follow"`` (up to 20 redirects), ``"manual"`` (return the 3xx
    response) or ``"error"``. The body is read whole and decoded (gzip,
    brotli, ...), so ``Content-Encoding`` and ``Content-Length`` are dropped
    from the response's headers. Pass an ``httpx.AsyncClient`` as ``client``
    to reuse connections or set proxies and timeouts; by default each call
    opens and closes its own, with httpx's default 5 s timeouts.

    Inside a Durable Object the request waits until the object's earlier
    writes are durable (the output gate), as outgoing requests do in workerd.

    Raises:
        FetchError: If no response came (connection refused, timeout, DNS,
            a redirect with ``redirect="error"``).
        ModuleNotFoundError: If httpx is not installed.
    """
    try:
        import httpx  # optional: the fetch extra
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "pyobjects.fetch needs httpx: pip install 'pyobjects[fetch]'",
            name=exc.name,
        ) from None
    if redirect not in _REDIRECTS:
        raise ValueError(
            f"redirect must be 'follow', 'manual' or 'error', not {redirect!r}"
        )
    if isinstance(resource, Request):
        if method is not None or headers is not None or body is not None:
            raise TypeError(
                "fetch() takes either a Request or a URL with method/headers/body"
            )
        request = resource
    else:
        request = Request(resource, method=method or "GET", headers=headers, body=body)
    await anyio.lowlevel.checkpoint()
    owner = current_owner.get()
    if owner is not None:
        mark = owner.output_mark()
        if mark:
            await owner.wait_output(mark)  # the output gate: the request leaves
    try:
        if client is None:
            async with httpx.AsyncClient() as own:
                reply = await _send(own, request, redirect)
        else:
            reply = await _send(client, request, redirect)
    except httpx.TransportError as exc:
        raise FetchError(request.method, request.url, str(exc) or repr(exc)) from exc
    except httpx.TooManyRedirects as exc:
        raise FetchError(request.method, request.url, str(exc)) from exc
    if redirect == "error" and reply.is_redirect:
        raise FetchError(
            request.method,
            request.url,
            f"got a {reply.status_code} redirect and redirect='error'",
        )
    return Response(
        reply.content,
        reply.status_code,
        status_text=reply.reason_phrase,
        headers=[
            (name, value)
            for name, value in reply.headers.multi_items()
            if name.lower() not in _DECODED
        ],
    )


async def _send(
    client: httpx.AsyncClient, request: Request, redirect: RedirectMode
) -> httpx.Response:
    return await client.request(
        request.method,
        request.url,
        headers=request.headers.items(),
        content=request._body,
        follow_redirects=redirect == "follow",
    )
