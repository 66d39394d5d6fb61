"""Kept-alive HTTP/1.1 connections from a cluster node to the others' endpoints.

A forwarded call is one ``POST`` of a small msgpack body to another node's
endpoint (uvicorn, see ``_cluster``), answered with a ``Content-Length``
body. httpx did this at about 0.42 ms per request here, and with many
callers its pool walked every open connection on every request and every
answer (a ``poll()`` each); this client keeps a free list of connections per
node and writes and parses the little HTTP it needs itself.

What a caller can rely on (the cluster's retry rules depend on it):

- :class:`NodeConnectError` when no connection could be opened: nothing was
  sent, so the call may run elsewhere.
- :class:`OSError` for anything after the request may have been sent (a
  reset, an early end of stream, a timeout, a malformed answer): the call
  may or may not have run.
- A connection goes back to the free list only after a whole answer was
  read; one that was cancelled, failed or answered with
  ``Connection: close`` is closed. Before reuse, an idle connection is
  checked with a non-blocking ``poll()``: readable means the node closed it
  (a graceful stop, say), and it is dropped for a new one, so that a stop
  between two calls is seen as a refused connection and not as a failure of
  the call.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Final, final
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

__all__ = ["NodeClient", "NodeConnectError"]

# Connections idle for longer are closed rather than reused (the node
# endpoints keep theirs open for longer, see _cluster.KEEP_ALIVE).
IDLE_EXPIRY: Final = 30.0
# At most this many idle connections per node (each is a descriptor there too).
MAX_IDLE: Final = 64
_MAX_HEAD: Final = 16 << 10


class NodeConnectError(OSError):
    """No connection to the node could be opened: nothing was sent."""


@final
class _Connection:
    __slots__ = ("buffer", "fd", "stream", "used")

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        raw = stream.extra(SocketAttribute.raw_socket)
        self.fd: int = raw.fileno()
        self.buffer = bytearray()
        self.used = time.monotonic()

    def closed_by_peer(self) -> bool:
        """True if the idle connection has something to read: an end of stream."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))


@final
class NodeClient:
    """``POST`` requests to node endpoints, over kept-alive connections."""

    __slots__ = ("_closed", "_connect_timeout", "_idle", "_read_timeout")

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._closed = False

    async def post(
        self, url: str, path: str, body: bytes, content_type: bytes
    ) -> bytes:
        """Send *body* to ``url + path``; return the answer's body.

        Raises:
            NodeConnectError: No connection could be opened (nothing sent).
            OSError: The request failed after it may have been sent.
        """
        if self._closed:
            raise NodeConnectError("the node client is closed")
        conn = await self._take(url)
        if conn is None:
            conn = await self._connect(url)
        host = url.partition("://")[2].encode()
        request = b"".join(
            (
                b"POST ",
                path.encode(),
                b" HTTP/1.1\r\nhost: ",
                host,
                b"\r\ncontent-type: ",
                content_type,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )
        reusable = False
        try:
            try:
                with anyio.fail_after(self._read_timeout):
                    await conn.stream.send(request)
                    answer, reusable = await _read_answer(conn)
            except TimeoutError:
                raise OSError(
                    f"node {url} did not answer within {self._read_timeout} s"
                ) from None
            except (
                anyio.BrokenResourceError,
                anyio.EndOfStream,
                anyio.ClosedResourceError,
            ) as exc:
                raise OSError(f"the connection to node {url} broke: {exc!r}") from exc
        finally:
            if reusable and not self._closed:
                await self._give_back(url, conn)
            else:
                await _close(conn)
        return answer

    async def aclose(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                await _close(conn)

    async def _take(self, url: str) -> _Connection | None:
        connections = self._idle.get(url)
        if not connections:
            return None
        expired = time.monotonic() - IDLE_EXPIRY
        while connections:
            conn = connections.pop()  # the most recently used first
            if conn.used >= expired and not conn.closed_by_peer():
                return conn
            await _close(conn)
        return None

    async def _give_back(self, url: str, conn: _Connection) -> None:
        conn.used = time.monotonic()
        connections = self._idle.setdefault(url, [])
        connections.append(conn)
        if len(connections) > MAX_IDLE:
            await _close(connections.pop(0))  # the least recently used

    async def _connect(self, url: str) -> _Connection:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if parts.scheme != "http" or host is None or port is None:
            raise NodeConnectError(f"not a node URL (http://host:port): {url!r}")
        try:
            with anyio.fail_after(self._connect_timeout):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError:
            # As httpx did: a timeout is not a refusal (the node may be
            # paused with a full backlog), so it is not "nothing sent".
            raise OSError(
                f"connecting to node {url} timed out ({self._connect_timeout} s)"
            ) from None
        except OSError as exc:
            raise NodeConnectError(f"cannot connect to node {url}: {exc}") from exc
        try:
            # A request is written in one call, but an answer must never wait
            # for a delayed ACK either (see the endpoint's socket).
            raw = stream.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not TCP
            pass
        return _Connection(stream)


async def _read_answer(conn: _Connection) -> tuple[bytes, bool]:
    """Read one answer: its body, and whether the connection can be reused."""
    buffer = conn.buffer
    receive = conn.stream.receive
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > _MAX_HEAD:
            raise OSError("a node answered with an oversized head")
        buffer += await receive()
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    version, _, rest = head[0].partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise OSError(f"a node answered something else than HTTP: {head[0]!r}")
    length: int | None = None
    keep_alive = version == "HTTP/1.1"
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            if not value.strip().isdigit():
                raise OSError(f"a node answered a bad Content-Length: {value!r}")
            length = int(value)
        elif name == "connection":
            token = value.strip().lower()
            if token in ("close", "keep-alive"):
                keep_alive = token == "keep-alive"
        elif name == "transfer-encoding":
            raise OSError("a node answered with a body of no declared length")
    if length is None:
        raise OSError("a node answered without a Content-Length")
    start = end + 4
    while len(buffer) < start + length:
        buffer += await receive()
    body = bytes(buffer[start : start + length])
    extra = len(buffer) > start + length  # nothing may follow an answer
    buffer.clear()
    return body, keep_alive and not extra


async def _close(conn: _Connection) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await conn.stream.aclose()
