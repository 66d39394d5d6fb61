"""A key-value store whose writes are conditional on the value's ETag.

    pyobjects serve examples.conditional_store.app:worker

Routes:

    POST   /stores[?jurisdiction=eu]   make a new store; answers its id (201)
    GET    /<store-id>                 the store's id, jurisdiction and keys
    GET    /<store-id>/<key>           the value, with its ETag (304 on If-None-Match)
    PUT    /<store-id>/<key>           create or replace the value (the body)
    DELETE /<store-id>/<key>           delete the value

Each store is one ``Store`` object, made with ``new_unique_id()`` (in a
jurisdiction if asked) and reached again with ``id_from_string()``; the
jurisdiction is part of the id, so it survives the round trip through the
URL. The rules for writes, checked and applied in one storage transaction:

- A PUT of a new key creates it: ``201 Created``.
- A PUT or DELETE of an existing key must say which version it replaces:
  ``If-Match: "<etag>"`` (or ``*``, any version). Without it: ``428
  Precondition Required``, so that no client overwrites a change it has not
  seen.
- ``If-Match`` that does not match the current ETag (or names a key that
  does not exist): ``412 Precondition Failed``, with the current ETag.
- ``If-None-Match: *`` on a PUT means "only create": ``412`` if the key
  exists.

The ETag is a hash of the value, so writing the same bytes again keeps it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TypedDict
from urllib.parse import parse_qs, quote, unquote

import pyobjects
from pyobjects import (
    DurableObject,
    Env,
    InvalidIdError,
    Request,
    Response,
    StorageLimitError,
)

#: Prefix of the storage keys that hold values.
VALUE = "value:"
# One entity tag of a list: optional weak prefix, then a quoted opaque tag.
_ETAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def etag_of(body: bytes) -> str:
    """The strong ETag of a value: a quoted hash of its bytes."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def parse_etags(header: str) -> list[tuple[bool, str]] | None:
    """Parse an ``If-Match``/``If-None-Match`` value into (weak, tag) pairs.

    Returns ``[]`` for ``*`` (matched by any current value) and ``None`` for
    a malformed header.
    """
    if header.strip() == "*":
        return []
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(header):
        match = _ETAG.match(header, position)
        if match is None or match.end() == position:
            return None
        tags.append((match[1] is not None, match[2]))
        position = match.end()
    return tags or None


def matches(tags: list[tuple[bool, str]], current: str, *, weak: bool) -> bool:
    """Whether *current* is one of *tags* (``[]`` is ``*``).

    ``If-Match`` compares strongly (a weak tag never matches); ``If-None-Match``
    compares weakly (RFC 9110, section 8.8.3.2).
    """
    if not tags:
        return True
    return any(tag == current and (weak or not is_weak) for is_weak, tag in tags)


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text + "\n", status=status, headers=headers)


class Record(TypedDict):
    """What is stored under ``value:<key>``."""

    etag: str
    type: str  # the Content-Type it was written with
    body: bytes


class Store(DurableObject):
    """One store: a value, its ETag and its content type per key."""

    async def fetch(self, request: Request) -> Response:
        if request.path == "/":
            if request.method not in ("GET", "HEAD"):
                return _text(405, "Method Not Allowed", {"allow": "GET, HEAD"})
            return await self._describe()
        key = unquote(request.path.removeprefix("/"))
        try:
            if request.method in ("GET", "HEAD"):
                return await self._get(key, request)
            if request.method == "PUT":
                return await self._put(key, request)
            if request.method == "DELETE":
                return await self._delete(key, request)
        except _Malformed as exc:
            return _text(400, f"Bad Request: malformed {exc} header")
        except StorageLimitError as exc:  # a key or value too long: nothing written
            if exc.kind == "value":
                return _text(413, f"Payload Too Large: {exc}")
            return _text(414, f"URI Too Long: {exc}")
        return _text(405, "Method Not Allowed", {"allow": "GET, HEAD, PUT, DELETE"})

    async def _describe(self) -> Response:
        stored = await self.ctx.storage.list(prefix=VALUE)
        keys = {k.removeprefix(VALUE): v["etag"] for k, v in stored.items()}
        info = {
            "id": str(self.ctx.id),
            "jurisdiction": self.ctx.id.jurisdiction,
            "keys": keys,
        }
        return Response(
            json.dumps(info) + "\n", headers={"content-type": "application/json"}
        )

    async def _get(self, key: str, request: Request) -> Response:
        record: Record | None = await self.ctx.storage.get(VALUE + key)
        if record is None:
            return _text(404, "Not Found")
        if_none_match = _conditions(request, "if-none-match")
        if if_none_match is not None and matches(
            if_none_match, record["etag"], weak=True
        ):
            return Response(status=304, headers={"etag": record["etag"]})
        headers = {"etag": record["etag"], "content-type": record["type"]}
        return Response(record["body"], headers=headers)

    async def _put(self, key: str, request: Request) -> Response:
        body = await request.bytes()
        if_match = _conditions(request, "if-match")
        if_none_match = _conditions(request, "if-none-match")
        # The check and the write are one transaction: no other request to
        # this store can run between them, and the write is all or nothing.
        async with self.ctx.storage.transaction() as txn:
            current: Record | None = await txn.get(VALUE + key)
            refused = _refuse(current, if_match, if_none_match)
            if refused is not None:
                return refused
            etag = etag_of(body)
            content_type = (
                request.headers.get("content-type") or "application/octet-stream"
            )
            # Raises StorageLimitError for a value over 128 KiB: the
            # transaction then rolls back and the old value stays.
            record: Record = {"etag": etag, "type": content_type, "body": body}
            txn.put(VALUE + key, record)
        if current is None:
            location = f"/{self.ctx.id}/{quote(key)}"
            return _text(201, "Created", {"etag": etag, "location": location})
        return _text(200, "Replaced", {"etag": etag})

    async def _delete(self, key: str, request: Request) -> Response:
        if_match = _conditions(request, "if-match")
        async with self.ctx.storage.transaction() as txn:
            current: Record | None = await txn.get(VALUE + key)
            if current is None and if_match is None:
                return _text(404, "Not Found")
            refused = _refuse(current, if_match, None)
            if refused is not None:
                return refused
            txn.delete(VALUE + key)
        return Response(status=204)


class _Malformed(ValueError):
    """A conditional header that cannot be parsed (its name is the message)."""


def _conditions(request: Request, header: str) -> list[tuple[bool, str]] | None:
    value = request.headers.get(header)
    if value is None:
        return None
    tags = parse_etags(value)
    if tags is None:
        raise _Malformed(header)
    return tags


def _refuse(
    current: Record | None,
    if_match: list[tuple[bool, str]] | None,
    if_none_match: list[tuple[bool, str]] | None,
) -> Response | None:
    """The response refusing a write, or ``None`` to go ahead."""
    headers = {} if current is None else {"etag": current["etag"]}
    if if_match is not None:
        if current is None or not matches(if_match, current["etag"], weak=False):
            return _text(412, "Precondition Failed: If-Match", headers)
    elif if_none_match is not None:
        if current is not None and matches(if_none_match, current["etag"], weak=True):
            return _text(412, "Precondition Failed: If-None-Match", headers)
    elif current is not None:
        return _text(
            428,
            'Precondition Required: send If-Match: "<etag>" (or *) to replace a value',
            headers,
        )
    return None


async def fetch(request: Request, env: Env) -> Response:
    path = request.path
    if path == "/stores":
        if request.method != "POST":
            return _text(405, "Method Not Allowed", {"allow": "POST"})
        query = parse_qs(request.query)
        jurisdiction = query.get("jurisdiction", [None])[0]
        try:
            store_id = env.STORES.new_unique_id(jurisdiction=jurisdiction)
        except ValueError as exc:  # an unknown jurisdiction
            return _text(400, f"Bad Request: {exc}")
        return _text(201, str(store_id), {"location": f"/{store_id}"})

    store_hex, _, key = path.removeprefix("/").partition("/")
    try:
        store_id = env.STORES.id_from_string(store_hex)
    except InvalidIdError as exc:  # malformed, or an id of another namespace
        return _text(400, f"Bad Request: {exc}")
    if not key and path.endswith("/"):
        return _text(404, "Not Found: the key is empty")
    # The object sees /<key> (still percent-encoded) and the same request.
    forwarded = Request(
        f"https://store/{key}",
        method=request.method,
        headers=request.headers,
        body=await request.bytes(),
    )
    response: Response = await env.STORES.get(store_id).fetch(forwarded)
    return response


worker = pyobjects.Worker(fetch, bindings={"STORES": Store})
