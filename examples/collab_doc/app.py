"""A collaborative text document over WebSockets, one Durable Object per document.

    pyobjects serve examples.collab_doc.app:worker

Routes:

    GET /docs/<name>/ws   edit the document (a WebSocket upgrade)
    GET /docs/<name>      its text and version (JSON)

A client that connects gets ``{"type": "sync", "text": ..., "version": v}``.
It sends edits made against the text of a version it has seen:

    {"op": "insert", "pos": 3, "text": "abc", "base": 7, "id": "any"}
    {"op": "delete", "pos": 3, "len": 2, "base": 7, "id": "any"}

The document orders the edits (one at a time: the object is single-threaded),
*transforms* an edit made against an older version over every operation
applied since that version, so that it still means what its author meant,
applies it, bumps the version and sends everyone, its author included:

    {"type": "op", "version": 8, "ops": [...], "id": "any"}

``ops`` is the edit as applied: zero, one or two primitive operations (a
delete whose range received a concurrent insert is split around it, so the
insert survives). A client that applies the ``op`` messages in version order
holds exactly the document's text: every client converges. ``id`` is the
sender's own, echoed so that it recognizes its edit. An edit that cannot be
applied gets ``{"type": "error", "error": ..., "version": v}``, to its sender
only.

The text, the version and the last operations are in storage, written
together at each edit; the constructor loads them (in
``block_concurrency_while``), so the sockets can hibernate and the object
restart without losing an edit.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict
from urllib.parse import unquote

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectState,
    Env,
    Request,
    Response,
    WebSocket,
    WebSocketPair,
)

#: How many past versions an edit may be based on (older ones must resync).
HISTORY = 1000
#: The longest document, in characters (its UTF-8 fits a storage value).
MAX_LENGTH = 32_000


class Op(TypedDict, total=False):
    """A primitive operation: ``insert`` ``text`` at ``pos``, or ``delete`` ``len``."""

    op: str
    pos: int
    text: str
    len: int


class EditError(ValueError):
    """An edit that cannot be applied (the message goes to its sender)."""


def _key(version: int) -> str:
    return f"op:{version:012d}"


def apply(text: str, op: Op) -> str:
    """The text after *op*."""
    pos = op["pos"]
    if op["op"] == "insert":
        return text[:pos] + op["text"] + text[pos:]
    return text[:pos] + text[pos + op["len"] :]


def transform(op: Op, earlier: Op, *, after: bool = True) -> list[Op]:
    """*op*, made concurrently with *earlier*, rewritten to apply after it.

    Returns zero, one or two operations. Of two inserts at the same position,
    *op* goes after *earlier* if *after*, else before it. A delete loses what
    *earlier* already deleted, and is split around text *earlier* inserted
    inside its range, so that the insert survives.
    """
    pos = op["pos"]
    if earlier["op"] == "insert":
        at, size = earlier["pos"], len(earlier["text"])
        if op["op"] == "insert":
            moves = at < pos or (at == pos and after)
            return [{**op, "pos": pos + size if moves else pos}]
        length = op["len"]
        if at <= pos:
            return [{**op, "pos": pos + size}]
        if at >= pos + length:
            return [op]
        before = at - pos  # inserted inside the range: delete around it
        return [
            {"op": "delete", "pos": pos, "len": before},
            {"op": "delete", "pos": pos + size, "len": length - before},
        ]
    at, size = earlier["pos"], earlier["len"]
    if op["op"] == "insert":
        return [op] if pos <= at else [{**op, "pos": max(at, pos - size)}]
    length = op["len"]
    if at + size <= pos:
        return [{**op, "pos": pos - size}]
    if at >= pos + length:
        return [op]
    overlap = min(pos + length, at + size) - max(pos, at)
    if length == overlap:
        return []  # all of it was deleted already
    return [{"op": "delete", "pos": min(pos, at), "len": length - overlap}]


def xform(ops: list[Op], earlier: list[Op]) -> tuple[list[Op], list[Op]]:
    """Two concurrent lists of operations, each rewritten to apply after the other.

    Both lists apply (each in order) to the same text; *earlier* was applied
    first, so it wins ties. Returns ``(ops after earlier, earlier after ops)``.
    """
    if not ops or not earlier:
        return ops, earlier
    if len(ops) == 1 and len(earlier) == 1:
        return (
            transform(ops[0], earlier[0], after=True),
            transform(earlier[0], ops[0], after=False),
        )
    if len(ops) > 1:
        first, moved = xform(ops[:1], earlier)
        rest, moved = xform(ops[1:], moved)
        return first + rest, moved
    ops, first = xform(ops, earlier[:1])
    ops, rest = xform(ops, earlier[1:])
    return ops, first + rest


def growth(ops: list[Op]) -> int:
    """How many characters *ops* add to the text (negative: remove)."""
    return sum(len(op["text"]) if op["op"] == "insert" else -op["len"] for op in ops)


def parse_edit(message: str | bytes) -> tuple[Op, int, Any]:
    """The operation, base version and id of a client's edit."""
    try:
        edit = json.loads(message)
    except ValueError:
        raise EditError("an edit is a JSON object") from None
    if not isinstance(edit, dict):
        raise EditError("an edit is a JSON object")
    base = edit.get("base")
    pos = edit.get("pos")
    if type(base) is not int or type(pos) is not int or pos < 0:
        raise EditError("an edit needs an int 'base' and an int 'pos' >= 0")
    op: Op
    if edit.get("op") == "insert":
        text = edit.get("text")
        if not isinstance(text, str) or not text:
            raise EditError("an insert needs a non-empty 'text'")
        op = {"op": "insert", "pos": pos, "text": text}
    elif edit.get("op") == "delete":
        length = edit.get("len")
        if type(length) is not int or length < 1:
            raise EditError("a delete needs an int 'len' >= 1")
        op = {"op": "delete", "pos": pos, "len": length}
    else:
        raise EditError("'op' is 'insert' or 'delete'")
    return op, base, edit.get("id")


def _json(value: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(value) + "\n",
        status=status,
        headers={"content-type": "application/json"},
    )


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text + "\n", status=status, headers=headers)


class Document(DurableObject):
    """One document: its text, its version and the operations of recent versions."""

    def __init__(self, ctx: DurableObjectState, env: Env) -> None:
        super().__init__(ctx, env)
        self.text = ""
        self.version = 0
        self.log: dict[int, list[Op]] = {}  # version -> the ops that made it
        # Runs on every start, after hibernation too; no event runs before it.
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        stored = await self.ctx.storage.get(["text", "version"])
        self.text = stored.get("text", "")
        self.version = stored.get("version", 0)
        recent = await self.ctx.storage.list(prefix="op:", reverse=True, limit=HISTORY)
        self.log = {int(key.removeprefix("op:")): ops for key, ops in recent.items()}

    async def fetch(self, request: Request) -> Response:
        if request.path == "/":
            return _json({"text": self.text, "version": self.version})
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        server.send(
            json.dumps({"type": "sync", "text": self.text, "version": self.version})
        )
        return Response(status=101, websocket=client)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        # No await from here to the end: the edit is read, transformed,
        # applied and written as one step, and edits are applied one by one.
        try:
            op, base, edit_id = parse_edit(message)
            ops = self.rebase(op, base)
            text = self.text
            for each in ops:
                text = apply(text, each)
            if len(text) > MAX_LENGTH:
                raise EditError(f"a document is at most {MAX_LENGTH} characters")
        except EditError as exc:
            error = {"type": "error", "error": str(exc), "version": self.version}
            ws.send(json.dumps(error))
            return
        self.version += 1
        self.text = text
        self.log[self.version] = ops
        self.log.pop(self.version - HISTORY, None)
        # One commit (writes of an event are coalesced): all or nothing.
        self.ctx.storage.put(
            {"text": text, "version": self.version, _key(self.version): ops}
        )
        if self.version > HISTORY:
            self.ctx.storage.delete(_key(self.version - HISTORY))
        event = {"type": "op", "version": self.version, "ops": ops, "id": edit_id}
        data = json.dumps(event)
        for each_ws in self.ctx.get_websockets():
            each_ws.send(data)  # delivered once the edit is durable

    def rebase(self, op: Op, base: int) -> list[Op]:
        """*op*, made against version *base*, rewritten for the current text."""
        if base > self.version or base < 0:
            raise EditError(f"version {base} does not exist")
        if self.version - base > HISTORY:
            raise EditError(f"version {base} is too old: reconnect to resync")
        since = [self.log[version] for version in range(base + 1, self.version + 1)]
        length = len(self.text) - sum(growth(ops) for ops in since)
        end = op["pos"] if op["op"] == "insert" else op["pos"] + op["len"]
        if end > length:
            raise EditError(
                f"the edit is outside the text of version {base} ({length} characters)"
            )
        ops = [op]
        for earlier in since:
            ops, _ = xform(ops, earlier)
        return ops


async def fetch(request: Request, env: Env) -> Response:
    parts = request.path.removeprefix("/").split("/")
    if parts[0] != "docs" or len(parts) not in (2, 3) or not parts[1]:
        return _text(404, "Not Found: try /docs/<name> or /docs/<name>/ws")
    if len(parts) == 3 and parts[2] != "ws":
        return _text(404, "Not Found")
    if request.method not in ("GET", "HEAD"):
        return _text(405, "Method Not Allowed", {"allow": "GET, HEAD"})
    document = env.DOCUMENTS.get_by_name(unquote(parts[1]))
    if len(parts) == 2:
        response: Response = await document.fetch("https://doc/")
        return response
    if (request.headers.get("upgrade") or "").lower() != "websocket":
        return _text(426, "Upgrade Required: connect with a WebSocket client")
    response = await document.fetch(
        Request("https://doc/ws", headers={"upgrade": "websocket"})
    )
    return response


worker = pyobjects.Worker(fetch, bindings={"DOCUMENTS": Document})
