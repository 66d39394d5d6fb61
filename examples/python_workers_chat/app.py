# The camelCase spellings (getWebSockets, acceptWebSocket, ...) are aliases set
# at run time, so a type checker does not see them: typed code uses the
# snake_case names. This file keeps Cloudflare's spelling on purpose.
# mypy: disable-error-code="attr-defined, no-any-return"
"""A chat room written the Cloudflare Python Workers way.

This file is spelled as a Python Worker is (camelCase state methods,
``WebSocketPair.new().object_values()``, ``Response(..., web_socket=...)``,
``Response.json``); the one change for pyobjects is the import line, which
reads ``from workers import ...`` on Cloudflare. ``wrangler.toml`` beside it
binds the class; ``pyobjects serve`` in this folder serves it.

Routes:

    GET /                          the chat page (HTML)
    GET /rooms/<room>/ws?name=<n>  join a room (WebSocket upgrade)
    GET /rooms/<room>/who          who is in the room (JSON)

Each text frame a client sends goes to everyone in the room as
``{"type": "message", "name": ..., "text": ...}``; joins and leaves are
announced as ``{"type": "join"|"leave", "name": ..., "online": [...]}``.
The sockets are hibernatable: the room keeps nothing in memory, and finds
its clients and their names again through ``getWebSockets()`` and each
socket's attachment.
"""

import json
from typing import Any
from urllib.parse import parse_qs, urlparse

from pyobjects import (
    DurableObject,
    Request,
    Response,
    WebSocket,
    WebSocketPair,
    WorkerEntrypoint,
)

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>pyobjects chat</title></head>
<body>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off"><button>Send</button></form>
<script>
const params = new URLSearchParams(location.search);
const room = params.get("room") || "lobby";
const name = params.get("name") || "anonymous";
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const query = `name=${encodeURIComponent(name)}`;
const path = `/rooms/${encodeURIComponent(room)}/ws?${query}`;
const ws = new WebSocket(`${scheme}//${location.host}${path}`);
const log = document.getElementById("log");
ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  const item = document.createElement("li");
  item.textContent = data.type === "message"
    ? `${data.name}: ${data.text}` : `${data.name} ${data.type}s`;
  log.appendChild(item);
};
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value) { ws.send(input.value); input.value = ""; }
};
</script>
</body>
</html>
"""


class ChatRoom(DurableObject):
    """One room: its hibernatable sockets, each one's name in its attachment."""

    async def fetch(self, request: Request) -> Response:
        if urlparse(request.url).path.endswith("/who"):
            return Response.json({"online": self.online()})
        if request.headers.get("Upgrade") != "websocket":
            return Response("expected a WebSocket upgrade", 426)
        name = parse_qs(urlparse(request.url).query).get("name", ["anonymous"])[0]
        if len(self.ctx.getWebSockets()) >= int(self.env.ROOM_LIMIT):
            return Response("the room is full", 429)
        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server)
        server.serializeAttachment({"name": name})
        self.broadcast({"type": "join", "name": name, "online": self.online()})
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws: WebSocket, message: str | bytes) -> None:
        name = ws.deserializeAttachment()["name"]
        self.broadcast({"type": "message", "name": name, "text": str(message)})

    async def webSocketClose(
        self, ws: WebSocket, code: int, reason: str, was_clean: bool
    ) -> None:
        name = ws.deserializeAttachment()["name"]
        ws.close(code, reason)
        online = [n for s, n in self.sockets() if s is not ws]
        self.broadcast({"type": "leave", "name": name, "online": online}, skip=ws)

    def sockets(self) -> list[tuple[WebSocket, str]]:
        sockets = self.ctx.getWebSockets()
        return [(ws, ws.deserializeAttachment()["name"]) for ws in sockets]

    def online(self) -> list[str]:
        return sorted(name for _, name in self.sockets())

    def broadcast(self, event: dict[str, Any], skip: WebSocket | None = None) -> None:
        text = json.dumps(event)
        for ws, _ in self.sockets():
            # A socket that is closing (readyState 2) leaves anyway.
            if ws is not skip and ws.readyState == WebSocket.READY_STATE_OPEN:
                ws.send(text)


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        path = urlparse(request.url).path
        if path == "/":
            return Response(PAGE, headers={"content-type": "text/html;charset=utf-8"})
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "rooms" and parts[2] in ("ws", "who"):
            room = self.env.CHAT_ROOM.get(self.env.CHAT_ROOM.idFromName(parts[1]))
            return await room.fetch(request)
        return Response.json({"error": "not found"}, 404)
