"""The storage inspector in the browser (``pyobjects inspect --web``).

A small Starlette app over a read-only backend (``read_only_backend()``): one
HTML page (``_inspect_web.html``, plain DOM code, no framework) and the JSON
endpoints it calls, all read-only:

``GET /api/namespaces``
    The namespaces and how many objects each holds.
``GET /api/namespaces/{namespace}?offset=&limit=``
    One page of the namespace's objects (summaries).
``GET /api/objects/{namespace}/{object}``
    One object: summary, alarm and SQL tables (name, schema, row count).
``GET /api/objects/{namespace}/{object}/kv?offset=&limit=``
    One page of its key-value entries, decoded.
``GET /api/objects/{namespace}/{object}/tables/{table}?offset=&limit=``
    One page of a table's rows.
``POST /api/objects/{namespace}/{object}/sql`` with ``{"sql": "..."}``
    The rows of one read-only statement (as ``inspect --sql``), bounded in
    rows and time.

``{object}`` is what ``pyobjects inspect NAMESPACE OBJECT`` takes: a name, an
id or a unique id prefix. Every request must carry the token the command
printed, as ``?token=`` (the page's URL) or ``Authorization: Bearer``; any
other gets 403, so another local user or a web page the browser visits
(DNS rebinding included) reads nothing. The page is served with a strict
Content Security Policy, and renders stored data as text only.
"""

from __future__ import annotations

import importlib.resources
import json
import secrets
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ._errors import StorageError
from ._inspect import (
    AmbiguousObjectError,
    dump_object,
    find_object,
    format_alarm,
    jsonable,
    list_namespaces,
    prepare,
    run_query,
    sql_tables,
    summarize_objects,
    summary_json,
    table_rows,
)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Receive, Scope, Send

    from .storage._base import StorageBackend

__all__ = ["inspector_app", "new_token"]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: What one SQL statement may return and how long it may run.
MAX_QUERY_ROWS: Final = 1000
QUERY_TIMEOUT: Final = 5.0

_PAGE: Final = "_inspect_web.html"
# The page keeps the token in its URL: never send it on in a Referer, never
# cache a response, and run only the page's own script and style.
_PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def new_token() -> str:
    """A fresh random token for one run of the inspector."""
    return secrets.token_urlsafe(24)


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False).encode()


class _RequireToken:
    """Refuse (403) every HTTP request without the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = PlainTextResponse(
                "403 Forbidden: open the URL `pyobjects inspect --web` printed "
                "(it holds the token)",
                status_code=403,
                headers=_HEADERS,
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given.append(value[7:].strip())
        for pair in scope["query_string"].split(b"&"):
            name, _, value = pair.partition(b"=")
            if name == b"token":
                given.append(value)
        # One comparison per candidate, each in constant time.
        return any(secrets.compare_digest(g, self._token) for g in given)


def _page_bound(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(400, f"{name} must be an integer, got {raw!r}") from None
    if not 0 <= value <= maximum:
        raise _ApiError(400, f"{name} must be between 0 and {maximum}, got {value}")
    return value


def _paging(request: Request) -> tuple[int, int]:
    offset = _page_bound(request, "offset", 0, 2**62)
    limit = _page_bound(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    return offset, limit


class _Inspector:
    """The endpoints, over one read-only backend."""

    def __init__(
        self,
        backend: StorageBackend,
        *,
        storage_label: str,
        max_query_rows: int,
        query_timeout: float,
    ) -> None:
        self._backend = backend
        self._label = storage_label
        self._max_query_rows = max_query_rows
        self._query_timeout = query_timeout
        self._page = (
            importlib.resources.files(__package__ or "pyobjects")
            .joinpath(_PAGE)
            .read_text(encoding="utf-8")
        )

    async def page(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        return Response(
            self._page.replace("{{nonce}}", nonce),
            media_type="text/html",
            headers={
                **_HEADERS,
                "Content-Security-Policy": _PAGE_POLICY.format(nonce=nonce),
            },
        )

    async def namespaces(self, request: Request) -> Response:
        namespaces = await list_namespaces(self._backend)
        listed = [
            {"name": ns, "objects": len(await self._backend.list_object_ids(ns))}
            for ns in namespaces
        ]
        return _json({"storage": self._label, "namespaces": listed})

    async def objects(self, request: Request) -> Response:
        namespace = request.path_params["namespace"]
        offset, limit = _paging(request)
        ids = await self._backend.list_object_ids(namespace)
        page = await summarize_objects(
            self._backend, namespace, ids[offset : offset + limit]
        )
        return _json(
            {
                "namespace": namespace,
                "total": len(ids),
                "offset": offset,
                "limit": limit,
                "objects": [summary_json(s) for s in page],
            }
        )

    async def _object_id(self, request: Request) -> tuple[str, str]:
        namespace = request.path_params["namespace"]
        ref = request.path_params["object"]
        try:
            object_id = await find_object(self._backend, namespace, ref)
        except AmbiguousObjectError as exc:
            raise _ApiError(400, str(exc)) from None
        if object_id is None:
            raise _ApiError(404, f"no stored object {ref!r} in namespace {namespace!r}")
        await prepare(self._backend, namespace, object_id)
        return namespace, object_id

    async def object(self, request: Request) -> Response:
        namespace, object_id = await self._object_id(request)
        (summary,) = await summarize_objects(self._backend, namespace, [object_id])
        document = summary_json(summary)
        alarm = summary.alarm
        document["alarm_utc"] = None if alarm is None else format_alarm(alarm)
        document["tables"] = [
            {"name": t.name, "sql": t.sql, "rows": t.rows}
            for t in sql_tables(self._backend, namespace, object_id)
        ]
        return _json(document)

    async def kv(self, request: Request) -> Response:
        namespace, object_id = await self._object_id(request)
        offset, limit = _paging(request)
        _, items = await dump_object(self._backend, namespace, object_id)
        return _json(
            {
                "total": len(items),
                "offset": offset,
                "limit": limit,
                "entries": [
                    {"key": key, "value": jsonable(value)}
                    for key, value in items[offset : offset + limit]
                ],
            }
        )

    async def table(self, request: Request) -> Response:
        namespace, object_id = await self._object_id(request)
        offset, limit = _paging(request)
        name = request.path_params["table"]
        found = table_rows(
            self._backend, namespace, object_id, name, offset=offset, limit=limit
        )
        if found is None:
            raise _ApiError(404, f"object {object_id} has no table {name!r}")
        table, columns, rows = found
        return _json(
            {
                "name": table.name,
                "sql": table.sql,
                "total": table.rows,
                "offset": offset,
                "limit": limit,
                "columns": columns,
                "rows": [jsonable(row) for row in rows],
            }
        )

    async def sql(self, request: Request) -> Response:
        namespace, object_id = await self._object_id(request)
        try:
            body = await request.json()
        except ValueError:
            raise _ApiError(400, 'the body must be JSON: {"sql": "..."}') from None
        statement = body.get("sql") if isinstance(body, dict) else None
        if not isinstance(statement, str) or not statement.strip():
            raise _ApiError(400, 'the body must be JSON: {"sql": "..."}')
        try:
            columns, rows = run_query(
                self._backend,
                namespace,
                object_id,
                statement,
                max_rows=self._max_query_rows + 1,
                timeout=self._query_timeout,
            )
        except ValueError as exc:
            raise _ApiError(400, str(exc)) from None
        return _json(
            {
                "columns": columns,
                "rows": [jsonable(row) for row in rows[: self._max_query_rows]],
                "truncated": len(rows) > self._max_query_rows,
            }
        )


def _json(content: dict[str, Any]) -> Response:
    return _JSON(content, headers=_HEADERS)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _ApiError)
    return _JSON({"error": str(exc)}, status_code=exc.status, headers=_HEADERS)


async def _bad_name(request: Request, exc: Exception) -> Response:
    # The backend refuses a malformed namespace name with ValueError (and
    # find_object an id prefix in an impossible form); nothing else raises it.
    return _JSON({"error": str(exc)}, status_code=400, headers=_HEADERS)


async def _storage_error(request: Request, exc: Exception) -> Response:
    return _JSON({"error": str(exc)}, status_code=500, headers=_HEADERS)


def inspector_app(
    backend: StorageBackend,
    *,
    token: str,
    storage_label: str = "",
    max_query_rows: int = MAX_QUERY_ROWS,
    query_timeout: float = QUERY_TIMEOUT,
) -> ASGIApp:
    """The inspector's ASGI app over *backend* (which it only reads).

    Args:
        backend: A backend that lists its namespaces, best one from
            ``read_only_backend()``; the caller closes it.
        token: What every request must carry (see :func:`new_token`).
        storage_label: What the page names as the storage (its directory).
        max_query_rows: The most rows a SQL statement returns (the rest is
            cut, and the answer says ``"truncated": true``).
        query_timeout: Seconds after which a SQL statement is interrupted.
    """
    inspector = _Inspector(
        backend,
        storage_label=storage_label,
        max_query_rows=max_query_rows,
        query_timeout=query_timeout,
    )
    prefix = "/api/objects/{namespace}/{object}"
    app = Starlette(
        routes=[
            Route("/", inspector.page),
            Route("/api/namespaces", inspector.namespaces),
            Route("/api/namespaces/{namespace}", inspector.objects),
            Route(prefix, inspector.object),
            Route(prefix + "/kv", inspector.kv),
            Route(prefix + "/tables/{table:path}", inspector.table),
            Route(prefix + "/sql", inspector.sql, methods=["POST"]),
        ],
        exception_handlers={
            _ApiError: _api_error,
            ValueError: _bad_name,
            StorageError: _storage_error,
        },
    )
    return _RequireToken(app, token)
