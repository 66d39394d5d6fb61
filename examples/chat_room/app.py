"""Chat rooms over WebSockets, one Durable Object per room.

    pyobjects serve examples.chat_room.app:worker

Routes:

    GET /rooms/<name>/ws?username=<who>   join the room (a WebSocket upgrade)
    GET /rooms/<name>/messages            the room's last 100 messages (JSON)

Every message on the socket is JSON. The server sends:

    {"type": "welcome", "username": ..., "online": [...], "history": [...]}
    {"type": "message", "username": ..., "text": ..., "at": <epoch ms>}
    {"type": "join", "username": ..., "online": [...]}
    {"type": "leave", "username": ..., "online": [...]}
    {"type": "error", "error": ...}

A client sends the text of a message, as a text frame (or ``ping``, answered
``pong`` by the runtime without waking the room). A message goes to everyone
in the room but its sender, and into the room's SQL table, which keeps the
last 100.

The sockets are hibernatable (``ctx.accept_websocket()``) and each one's
attachment holds its username, so the room keeps no state in memory: when
every client is idle the instance is evicted, the connections stay open, and
the next message builds a new instance that finds everyone through
``ctx.get_websockets()`` and their names through ``deserialize_attachment()``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectState,
    Env,
    Request,
    Response,
    WebSocket,
    WebSocketPair,
    WebSocketRequestResponsePair,
)

#: How many messages a room keeps (and sends to a client that joins).
HISTORY = 100
#: The longest message text, in characters.
MAX_TEXT = 2000
#: The longest username, in characters.
MAX_USERNAME = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    text TEXT NOT NULL,
    at INTEGER NOT NULL
)
"""


def _json(value: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(value) + "\n",
        status=status,
        headers={"content-type": "application/json"},
    )


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text + "\n", status=status, headers=headers)


class ChatRoom(DurableObject):
    """One room: its sockets (held by the runtime) and its last messages (SQL)."""

    def __init__(self, ctx: DurableObjectState, env: Env) -> None:
        super().__init__(ctx, env)
        # Runs again on every wake-up: both calls are cheap and idempotent.
        self.sql = ctx.storage.sql
        self.sql.exec(_SCHEMA)
        ctx.set_websocket_auto_response(WebSocketRequestResponsePair("ping", "pong"))

    async def fetch(self, request: Request) -> Response:
        if request.path == "/messages":
            return _json({"messages": self.history()})
        # The worker checked the upgrade and the username.
        username = parse_qs(request.query)["username"][0]
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        server.serialize_attachment({"username": username})  # survives hibernation
        online = self.online()
        server.send(
            json.dumps(
                {
                    "type": "welcome",
                    "username": username,
                    "online": online,
                    "history": self.history(),
                }
            )
        )
        self.broadcast(
            {"type": "join", "username": username, "online": online}, skip=server
        )
        return Response(status=101, websocket=client)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        if not isinstance(message, str):
            ws.send(json.dumps({"type": "error", "error": "send text frames"}))
            return
        if not message.strip():
            return
        if len(message) > MAX_TEXT:
            error = f"a message is at most {MAX_TEXT} characters"
            ws.send(json.dumps({"type": "error", "error": error}))
            return
        username = ws.deserialize_attachment()["username"]
        at = self.ctx.now_ms()
        self.sql.exec(
            "INSERT INTO messages (username, text, at) VALUES (?, ?, ?)",
            username,
            message,
            at,
        )
        # Keep the newest HISTORY rows only.
        self.sql.exec(
            "DELETE FROM messages WHERE seq <= (SELECT max(seq) FROM messages) - ?",
            HISTORY,
        )
        # Delivered once the insert is durable (the output gate).
        self.broadcast(
            {"type": "message", "username": username, "text": message, "at": at},
            skip=ws,
        )

    async def websocket_close(
        self, ws: WebSocket, code: int, reason: str, was_clean: bool
    ) -> None:
        self._left(ws)

    async def websocket_error(self, ws: WebSocket, error: BaseException) -> None:
        self._left(ws)

    def _left(self, ws: WebSocket) -> None:
        username = ws.deserialize_attachment()["username"]
        # The closing socket is still listed until this handler returns.
        online = self.online(skip=ws)
        self.broadcast({"type": "leave", "username": username, "online": online}, ws)

    def online(self, skip: WebSocket | None = None) -> list[str]:
        """The usernames of the connected clients, sorted (with repeats)."""
        return sorted(
            ws.deserialize_attachment()["username"]
            for ws in self.ctx.get_websockets()
            if ws is not skip
        )

    def broadcast(self, event: dict[str, Any], skip: WebSocket | None = None) -> None:
        """Send *event* to every connected client but *skip*."""
        data = json.dumps(event)
        for ws in self.ctx.get_websockets():
            if ws is not skip:
                ws.send(data)  # does nothing on a socket that has closed

    def history(self) -> list[dict[str, Any]]:
        """The last messages, oldest first."""
        rows = self.sql.exec(
            "SELECT username, text, at FROM messages ORDER BY seq DESC LIMIT ?",
            HISTORY,
        ).to_array()
        return [dict(row) for row in reversed(rows)]


async def fetch(request: Request, env: Env) -> Response:
    parts = request.path.removeprefix("/").split("/")
    if len(parts) != 3 or parts[0] != "rooms" or not parts[1]:
        return _text(404, "Not Found: try /rooms/<name>/ws?username=<you>")
    name, action = unquote(parts[1]), parts[2]
    if action not in ("ws", "messages"):
        return _text(404, "Not Found")
    if request.method not in ("GET", "HEAD"):
        return _text(405, "Method Not Allowed", {"allow": "GET, HEAD"})
    room = env.ROOMS.get_by_name(name)
    if action == "messages":
        forwarded = Request("https://room/messages")
        response: Response = await room.fetch(forwarded)
        return response
    usernames = parse_qs(request.query).get("username", [""])
    username = usernames[0].strip()
    if not username:
        return _text(400, "Bad Request: give a ?username=")
    if len(username) > MAX_USERNAME:
        return _text(400, f"Bad Request: a username is at most {MAX_USERNAME} chars")
    if (request.headers.get("upgrade") or "").lower() != "websocket":
        return _text(426, "Upgrade Required: connect with a WebSocket client")
    forwarded = Request(
        "https://room/ws?" + urlencode({"username": username}),
        headers={"upgrade": "websocket"},
    )
    response = await room.fetch(forwarded)
    return response


worker = pyobjects.Worker(fetch, bindings={"ROOMS": ChatRoom})
