"""Several runtimes on one PostgreSQL database: one cluster (issue #13).

Each runtime started with ``node=Node(...)`` on a
:class:`~pyobjects.storage.PostgresBackend` is a node. It serves a small
internal HTTP endpoint (uvicorn) where other nodes deliver RPC calls and
``fetch`` requests to the objects it holds, and it records its address in
the database's ``nodes`` table, with a heartbeat renewed with its leases.

Routing: the object's lease row is the truth. A call on a node that does not
hold the object first tries to run it there (which takes the lease if nobody
holds it); if another live node holds it, the call is forwarded to that node
and the route is remembered. A node that receives a forwarded call for an
object it does not hold answers "moved" with the holder, and the caller
follows at most two such redirects. Values travel through the storage codec
(the one RPC copies through in-process), errors keep their type when it is a
built-in or a pyobjects error.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import logging
import socket
import sys
import typing
from typing import TYPE_CHECKING, Any

import anyio
from msgpack import ExtType

from pyobjects._errors import (
    DurableObjectError,
    LeaseHeldError,
    LeaseLostError,
    NodeUnreachableError,
)
from pyobjects._http import Headers, Request, Response
from pyobjects._ids import DurableObjectId
from pyobjects._serialization import _default, _ext_hook, _pack, _unpack, decode, encode
from pyobjects._websocket import WebSocketClose
from pyobjects._ws_bridge import Bridge, call

if TYPE_CHECKING:
    from collections.abc import (
        Awaitable,
        Callable,
        Coroutine,
        Iterator,
        MutableMapping,
    )

    from pyobjects._node import Node

    from ._namespace import DurableObjectNamespace
    from ._runtime import Runtime
    from ._stub import DurableObjectStub

__all__ = ["Cluster"]

logger: logging.Logger = logging.getLogger("pyobjects")

_PATH_CALL = "/__pyobjects/call"
_PATH_FETCH = "/__pyobjects/fetch"
_PATH_SOCKET = "/__pyobjects/socket"
# The msgpack ext code of an id or a stub crossing nodes (the codec's own
# codes are below 64, and 64 is its in-process reference).
_EXT_HANDLE = 65
_REQUEST_HEADER = "x-pyobjects-request"
# Messages between nodes: the edge node enforces the app's own limit on what
# clients send; this is Cloudflare's (and the edge's default) 32 MiB.
_MAX_SOCKET_MESSAGE = 32 * 1024 * 1024
_MAX_REDIRECTS = 2
_CONTENT_TYPE = b"application/x-pyobjects"


class _Moved(Exception):
    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


class _Gone(Exception):
    """The node left (or is leaving) the cluster: the call did not run there."""


class Cluster:
    """The node side of one runtime (internal): its endpoint and its routes."""

    def __init__(self, runtime: Runtime[Any], node: Node) -> None:
        storage: Any = runtime.storage
        if not hasattr(storage, "register_node"):
            raise TypeError(
                "Runtime(node=...) needs a storage every node shares: "
                f"PostgresBackend, not {type(storage).__name__}"
            )
        self._runtime = runtime
        self._node = node
        self._backend = storage
        self._routes: dict[tuple[str, str], str] = {}
        # Calls in flight, by node: their cancel scopes and when they started.
        self._calls: dict[str, dict[anyio.CancelScope, float]] = {}
        self._client: Any = None
        self._server: Any = None
        self._stopped = anyio.Event()
        self._leaving = False
        self._members: list[str] = []
        self.url: str | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(
        self, spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
    ) -> None:
        """Listen, register this node, serve in the background (*spawn*)."""
        try:
            import httpx
            import uvicorn
        except ModuleNotFoundError as exc:  # pragma: no cover - the extra is missing
            raise RuntimeError(
                f"Runtime(node=...) needs {exc.name}: pip install 'pyobjects[cluster]'"
            ) from None
        node = self._node
        # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off
        # (TCP_NODELAY) only on sockets whose proto says TCP, and accepted
        # connections copy it. With Nagle on, an answer written in two parts
        # (head, body) on a kept-alive connection waits for the caller's
        # delayed ACK: about 40 ms per forwarded call.
        sock = socket.socket(
            socket.AF_INET6 if ":" in node.host else socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((node.host, node.port))
        sock.listen(1024)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        host = f"[{node.host}]" if ":" in node.host else node.host
        self.url = node.url or f"http://{host}:{port}"

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield  # the application's own server handles signals

        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        server = self._server = _Server(config)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))
        await self._backend.register_node(self.url)

        stopped = self._stopped = anyio.Event()

        async def serve() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()
                stopped.set()

        spawn(serve)
        self._members = await self._backend.live_nodes()
        spawn(self._watch_members)

    async def stop(self) -> None:
        """Leave the cluster: stop answering, close the client."""
        self._leaving = True
        server = self._server
        if server is not None:
            # uvicorn closes its connections (keep-alive ones included) and
            # lets requests under way finish.
            server.should_exit = True
            with anyio.move_on_after(5):
                await self._stopped.wait()
        client, self._client = self._client, None
        if client is not None:
            with anyio.move_on_after(2):
                await client.aclose()

    # -- calls from this node's stubs ---------------------------------------------

    async def call(
        self,
        stub: DurableObjectStub[Any],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        local: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Run ``stub.name(*args, **kwargs)`` here or on the object's node."""
        return await self._route(
            stub,
            local,
            lambda url: self._send(
                url,
                _PATH_CALL,
                {
                    "ns": stub._namespace._storage_name,
                    "id": str(stub.id),
                    "name": stub.id.name,
                    "method": name,
                    "args": list(args),
                    "kwargs": kwargs,
                    "trace": self._trace(),
                },
            ),
        )

    async def fetch(
        self,
        stub: DurableObjectStub[Any],
        request: Request,
        local: Callable[[], Awaitable[Response]],
    ) -> Response:
        """Deliver *request* to the object's ``fetch()``, here or on its node."""
        if "websocket" in (request.headers.get("upgrade") or "").lower():
            return typing.cast(
                "Response",
                await self._route(
                    stub, local, lambda url: self._open_socket(url, stub, request)
                ),
            )
        body = await request.bytes()

        async def remote(url: str) -> Response:
            answer = await self._send(
                url,
                _PATH_FETCH,
                {
                    "ns": stub._namespace._storage_name,
                    "id": str(stub.id),
                    "name": stub.id.name,
                    "method": request.method,
                    "url": request.url,
                    "headers": list(request.headers.items()),
                    "body": body,
                    "trace": self._trace(),
                },
            )
            return Response(
                answer["body"], status=answer["status"], headers=answer["headers"]
            )

        return typing.cast("Response", await self._route(stub, local, remote))

    async def _route(
        self,
        stub: DurableObjectStub[Any],
        local: Callable[[], Awaitable[Any]],
        remote: Callable[[str], Awaitable[Any]],
    ) -> Any:
        key = (stub._namespace._storage_name, str(stub.id))
        url = self._routes.get(key)
        if (
            url is None
            and self._runtime._catalog.live(stub._namespace, stub.id) is None
        ):
            url = self._placement(key)  # a hint: the lease row is the truth
        tries = waits = 0
        patience: float | None = None  # until when a leaving holder is waited for
        while tries < _MAX_REDIRECTS + 2:
            tries += 1
            if url is None or url == self.url:
                await self._fence(stub, key)
                try:
                    return await local()
                except LeaseHeldError as exc:
                    url = await self._backend.node_url(exc.owner)
                    if url is None or url == self.url:
                        raise  # held by a runtime that is no live node
                    self._routes[key] = url
                    continue
            try:
                return await remote(url)
            except _Gone:
                # The holder is leaving (or died): its leases are being given
                # back, or run out within a TTL. Waiting for that is no
                # redirect: for up to a TTL, with growing pauses.
                self._routes.pop(key, None)
                url = None
                now = anyio.current_time()
                if patience is None:
                    patience = now + self._backend.lease_ttl
                if now < patience:
                    tries = 0
                await anyio.sleep(min(0.05 * 2**waits, 0.5))
                waits += 1
            except _Moved as moved:
                url = await self._backend.node_url(moved.owner)
                if url is None:
                    self._routes.pop(key, None)
                else:
                    self._routes[key] = url
            except OSError as exc:
                self._routes.pop(key, None)
                raise NodeUnreachableError(
                    f"the node holding Durable Object {key[0]}/{key[1]} ({url}) "
                    f"does not answer: {exc}"
                ) from exc
        raise NodeUnreachableError(
            f"Durable Object {key[0]}/{key[1]} moved more than {_MAX_REDIRECTS} "
            "times during one call"
        )

    def _placement(self, key: tuple[str, str]) -> str | None:
        """The live node where an object nobody runs should start (HRW hashing).

        Rendezvous hashing: every node scores ``hash(object, node)`` and the
        highest wins, so the objects spread evenly and only the objects of a
        node that comes or goes change place. ``None`` means this node.
        """
        members = self._members
        if len(members) < 2:
            return None
        name = f"{key[0]}/{key[1]}".encode()
        best = max(
            members,
            key=lambda url: hashlib.blake2b(
                name + b"@" + url.encode(), digest_size=8
            ).digest(),
        )
        return None if best == self.url else best

    async def _watch_members(self) -> None:
        """Keep the list of live nodes fresh (every third of the lease TTL)."""
        while True:
            with contextlib.suppress(Exception):
                asked = anyio.current_time()
                self._members = members = await self._backend.live_nodes()
                # A paused or cut-off node still accepts connections (the
                # kernel does) but never answers: give up on the calls sent
                # to it once its heartbeat is stale, as its leases then are.
                # Only on calls older than the question: a call started
                # since may go to a node that joined after it was asked.
                for url, calls in self._calls.items():
                    if url not in members:
                        stale = [s for s, started in calls.items() if started < asked]
                        if stale:
                            logger.warning(
                                "giving up on %d call(s) forwarded to node %s: its "
                                "heartbeat is older than the lease TTL (%s s)",
                                len(stale),
                                url,
                                self._backend.lease_ttl,
                            )
                        for scope in stale:
                            scope.cancel()
            await anyio.sleep(self._backend.lease_ttl / 3)

    async def _fence(self, stub: DurableObjectStub[Any], key: tuple[str, str]) -> None:
        """Self-fencing: serve an object here only while its lease is trusted.

        Past the trusted part of its lease (this process may have been paused
        while another node took the object over), renew first; if the object
        was lost, reset the local instance, so that the call finds the new
        holder instead of reading a stale copy.
        """
        backend = self._backend
        if backend.lease_valid(*key) or await backend.revalidate(*key):
            return
        actor = self._runtime._catalog.live(stub._namespace, stub.id)
        if actor is not None:
            actor.break_(LeaseLostError(namespace=key[0], object_id=key[1], epoch=-1))
        stub._actor = None  # this stub did not see that instance fail

    async def _send(self, url: str, path: str, message: dict[str, Any]) -> Any:
        import httpx

        client = self._client
        if client is None:
            raise NodeUnreachableError("this node has left the cluster")
        body = self._encode(message)
        response: Any = None
        # Watched by _watch_members, not by a task per call (spawning and
        # cancelling one cost about 90 us, a sixth of a forwarded call).
        scope = anyio.CancelScope()
        calls = self._calls.setdefault(url, {})
        calls[scope] = anyio.current_time()
        try:
            with scope:
                response = await client.post(
                    url + path,
                    content=body,
                    headers={"content-type": _CONTENT_TYPE.decode()},
                )
        except httpx.ConnectError as exc:
            # Nothing was sent: the call may run elsewhere.
            raise _Gone from exc
        except (httpx.TransportError, OSError) as exc:
            raise OSError(str(exc)) from exc
        finally:
            calls.pop(scope, None)
            if not calls and self._calls.get(url) is calls:
                del self._calls[url]
        if response is None:
            raise OSError(f"node {url} stopped renewing its leases")
        answer = self._decode(response.content)
        _raise_for(answer)
        return answer["ok"]

    async def _open_socket(
        self, url: str, stub: DurableObjectStub[Any], request: Request
    ) -> Response:
        """Upgrade through the object's node: a WebSocket between the nodes.

        The holder runs the object's ``fetch()`` and bridges the socket it
        returns to this connection, as its ASGI edge would bridge a client;
        here the connection stands in for the object's end, so the client's
        connection is bridged to it. The object's socket lives on its node,
        hibernation included.
        """
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake

        info = {
            "ns": stub._namespace._storage_name,
            "id": str(stub.id),
            "name": stub.id.name,
            "url": request.url,
            "headers": list(request.headers.items()),
            "trace": self._trace(),
        }
        header = base64.urlsafe_b64encode(encode(info)).decode()
        try:
            conn = await connect(
                "ws" + url.removeprefix("http") + _PATH_SOCKET,
                additional_headers={_REQUEST_HEADER: header},
                max_size=None,
                open_timeout=5,
                ping_interval=None,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise _Gone from exc
        try:
            first = await conn.recv()
            answer = decode(first if isinstance(first, bytes) else first.encode())
        except Exception:
            await conn.close()
            raise
        if "ok" not in answer:
            await conn.close()
            _raise_for(answer)
            denied = answer["deny"]
            return Response(
                denied["body"], status=denied["status"], headers=denied["headers"]
            )
        # Not a WebSocketPair end, but it has all the edge's bridge uses of one.
        return Response._upgrade(answer["ok"]["headers"], _RemoteSocket(conn))

    # -- the node endpoint ------------------------------------------------------

    async def _asgi(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "websocket":
            await self._serve_socket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path")
        if scope.get("method") != "POST" or path not in (_PATH_CALL, _PATH_FETCH):
            await _reply(send, 404, b"not found")
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        answer: dict[str, Any]
        try:
            request = self._decode(b"".join(chunks))
            if self._leaving or not self._runtime._running:
                answer = {"gone": True}
            else:
                with self._traced(request):
                    answer = await self._serve(path, request)
        except LeaseHeldError as exc:
            answer = {"moved": exc.owner}
        except Exception as exc:
            answer = {"error": _error_to(exc)}
        await _reply(send, 200, self._encode(answer))

    async def _serve(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        stub: Any = self._stub(request)
        if path == _PATH_CALL:
            result = await stub._call_local(
                str(request["method"]), tuple(request["args"]), dict(request["kwargs"])
            )
            return {"ok": result}
        response: Response = await stub._fetch_local(
            Request(
                str(request["url"]),
                method=str(request["method"]),
                headers=Headers([tuple(h) for h in request["headers"]]),
                body=request["body"] or None,
            )
        )
        return {
            "ok": {
                "status": response.status,
                "headers": list(response.headers.items()),
                "body": await response.bytes(),
            }
        }

    async def _serve_socket(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """Another node's client wants a WebSocket to an object held here."""
        if (await receive())["type"] != "websocket.connect":
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(_REQUEST_HEADER.encode())
        if scope.get("path") != _PATH_SOCKET or raw is None:
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        client: Any = None
        answer: dict[str, Any]
        try:
            info = decode(base64.urlsafe_b64decode(raw))
            if self._leaving or not self._runtime._running:
                answer = {"gone": True}
            else:
                stub: Any = self._stub(info)
                with self._traced(info):
                    response: Response = await stub._fetch_local(
                        Request(
                            str(info["url"]),
                            headers=Headers([tuple(h) for h in info["headers"]]),
                        )
                    )
                client = response.websocket
                if client is None:
                    answer = {
                        "deny": {
                            "status": response.status,
                            "headers": list(response.headers.items()),
                            "body": await response.bytes(),
                        }
                    }
                else:
                    await call(client.accept)
                    answer = {"ok": {"headers": list(response.headers.items())}}
        except LeaseHeldError as exc:
            answer = {"moved": exc.owner}
        except Exception as exc:
            answer = {"error": _error_to(exc)}
        await send({"type": "websocket.send", "bytes": encode(answer)})
        if client is None:
            await send({"type": "websocket.close", "code": 1000})
            return
        await Bridge(client, receive, send, _MAX_SOCKET_MESSAGE).run(None)

    def _trace(self) -> dict[str, str] | None:
        """The caller's trace context (W3C headers), when this runtime traces."""
        if self._runtime._telemetry is None:
            return None
        from opentelemetry.propagate import inject

        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier or None

    @contextlib.contextmanager
    def _traced(self, message: dict[str, Any]) -> Iterator[None]:
        """Run a forwarded event inside the caller's trace (when both trace)."""
        carrier = message.get("trace")
        if not carrier or self._runtime._telemetry is None:
            yield
            return
        from opentelemetry import context
        from opentelemetry.propagate import extract

        token = context.attach(extract(dict(carrier)))
        try:
            yield
        finally:
            context.detach(token)

    def _stub(self, info: dict[str, Any]) -> Any:
        namespace = self._namespace(str(info["ns"]))
        return namespace.get(self._id(namespace, str(info["id"]), info.get("name")))

    @staticmethod
    def _id(
        namespace: DurableObjectNamespace[Any], hex_id: str, name: object
    ) -> DurableObjectId:
        """This node's id for *hex_id*, with its name when it was made from one."""
        ids = namespace._ids
        object_id = ids.from_string(hex_id)
        if isinstance(name, str):
            named = ids.from_name(name, jurisdiction=object_id.jurisdiction)
            if named == object_id:
                return named
        return object_id

    # Ids and stubs cross nodes as handles (binding's storage name, id, name)
    # and become the receiving node's own ids and stubs of that namespace.

    def _encode(self, message: object) -> bytes:
        from ._stub import DurableObjectStub

        def default(value: object) -> object:
            cls = type(value)
            if cls is DurableObjectStub:
                stub: Any = value
                handle = [stub._namespace._storage_name, str(stub.id), stub.id.name, 1]
                return ExtType(_EXT_HANDLE, _pack(handle, _default))
            if cls is DurableObjectId:
                object_id: Any = value
                for namespace in self._runtime._namespaces:
                    if namespace._ids.issued(object_id):
                        handle = [
                            namespace._storage_name,
                            str(object_id),
                            object_id.name,
                            0,
                        ]
                        return ExtType(_EXT_HANDLE, _pack(handle, _default))
            return _default(value)

        return _pack(message, default)

    def _decode(self, data: bytes) -> Any:
        def hook(code: int, raw: bytes) -> object:
            if code != _EXT_HANDLE:
                return _ext_hook(code, raw)
            storage_name, hex_id, name, is_stub = _unpack(raw, _ext_hook)
            namespace = self._namespace(str(storage_name))
            object_id = self._id(namespace, str(hex_id), name)
            return namespace.get(object_id) if is_stub else object_id

        return _unpack(data, hook)

    def _namespace(self, storage_name: str) -> DurableObjectNamespace[Any]:
        for namespace in self._runtime._namespaces:
            if namespace._storage_name == storage_name:
                return namespace
        raise LookupError(f"this node binds no namespace {storage_name!r}")


async def _reply(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    status: int,
    body: bytes,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", _CONTENT_TYPE)],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _raise_for(answer: dict[str, Any]) -> None:
    """Raise what another node's answer says went wrong, if anything."""
    if "gone" in answer:
        raise _Gone
    if "moved" in answer:
        raise _Moved(str(answer["moved"]))
    if "error" in answer:
        raise _error_from(answer["error"])


def _error_to(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    return {
        "module": cls.__module__,
        "type": cls.__qualname__,
        "message": str(exc),
        "retryable": bool(getattr(exc, "retryable", False)),
        "overloaded": bool(getattr(exc, "overloaded", False)),
        "reset": bool(getattr(exc, "durable_object_reset", False)),
    }


def _error_from(info: dict[str, Any]) -> BaseException:
    """Rebuild an error from another node: its own type if built-in or ours."""
    module, name, message = info["module"], info["type"], info["message"]
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif str(module).startswith("pyobjects"):
        # Every pyobjects error lives in the module of DurableObjectError.
        cls = getattr(sys.modules[DurableObjectError.__module__], name, None)
    exc: BaseException
    if isinstance(cls, type) and issubclass(cls, Exception):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
    else:
        exc = DurableObjectError(f"{name}: {message}")
    for flag, attribute in (
        ("retryable", "retryable"),
        ("overloaded", "overloaded"),
        ("reset", "durable_object_reset"),
    ):
        if info.get(flag):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, attribute, True)
    return exc


class _RemoteSocket:
    """The object's end of a client's socket, held on another node.

    Has what the ASGI edge's bridge needs of a ``WebSocketPair`` end
    (``accept``, ``send``, ``receive``, ``close``, ``_disconnect``), over the
    WebSocket to the object's node.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def accept(self) -> None:
        """Nothing to do: the holder accepted the object's end already."""

    async def send(self, data: str | bytes) -> None:
        await self._conn.send(data)

    async def receive(self) -> str | bytes | WebSocketClose:
        from websockets.exceptions import ConnectionClosed

        try:
            message: str | bytes = await self._conn.recv()
        except ConnectionClosed as exc:
            received = exc.rcvd
            if received is None:
                return WebSocketClose(
                    code=1006, reason="the object's node went away", was_clean=False
                )
            return WebSocketClose(
                code=received.code, reason=received.reason, was_clean=True
            )
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._conn.close(_wire_code(code), reason)

    async def _disconnect(self) -> None:
        await self._conn.close(1001, "the client went away")


def _wire_code(code: int) -> int:
    """A close code allowed on the wire (1005/1006/1015 never are)."""
    if code in {1000, 1001, 1002, 1003} or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1000 if code == 1005 else 1011
