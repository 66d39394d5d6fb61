"""The node-to-node HTTP client against scripted servers on loopback.

What the cluster's retry rules need from it: a refused connection is
``NodeConnectError`` (nothing sent), anything later is a plain ``OSError``;
connections are reused only after a whole answer, and an idle connection the
other node closed is replaced, not failed on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Self

import anyio
import anyio.abc
import pytest

from pyobjects._core._node_http import NodeClient, NodeConnectError

Script = Callable[[anyio.abc.SocketStream, int], Awaitable[None]]


def _answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


async def _read_request(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += await stream.receive()
    return body


class Server:
    """A TCP server whose *script* handles each connection (numbered from 0)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.url = ""

    async def __aenter__(self) -> Self:
        self._listener = await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=0
        )
        port = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        self.url = f"http://127.0.0.1:{port}"
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._listener.serve, self._handle)
        return self

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        number = self.connections
        self.connections += 1
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await self.script(stream, number)

    async def __aexit__(self, *exc: object) -> None:
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        await self._listener.aclose()


async def _echo_forever(stream: anyio.abc.SocketStream, number: int) -> None:
    while True:
        body = await _read_request(stream)
        await stream.send(_answer(b"%d:" % number + body))


def client(read_timeout: float = 5.0) -> NodeClient:
    return NodeClient(connect_timeout=2.0, read_timeout=read_timeout)


async def test_connections_are_kept_alive_and_reused() -> None:
    async with Server(_echo_forever) as server:
        http = client()
        for i in range(5):
            answer = await http.post(server.url, "/x", b"%d" % i, b"t")
            assert answer == b"0:%d" % i
        assert server.connections == 1
        await http.aclose()


async def test_an_idle_connection_the_node_closed_is_replaced() -> None:
    async def answer_once(stream: anyio.abc.SocketStream, number: int) -> None:
        body = await _read_request(stream)
        await stream.send(_answer(b"%d:" % number + body))
        # then close it, as a node that stops closes its idle connections

    async with Server(answer_once) as server:
        http = client()
        assert await http.post(server.url, "/x", b"a", b"t") == b"0:a"
        await anyio.sleep(0.05)  # the close arrives
        assert await http.post(server.url, "/x", b"b", b"t") == b"1:b"
        assert server.connections == 2
        await http.aclose()


async def test_a_refused_connection_means_nothing_was_sent() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nobody listens there now
    with pytest.raises(NodeConnectError):
        await client().post(f"http://127.0.0.1:{port}", "/x", b"a", b"t")


@pytest.mark.parametrize(
    "reply",
    [
        b"",  # closed after reading the request
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",  # cut short
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # no length
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
)
async def test_a_failure_after_sending_is_an_oserror_not_a_refusal(
    reply: bytes,
) -> None:
    async def broken(stream: anyio.abc.SocketStream, number: int) -> None:
        await _read_request(stream)
        if reply:
            await stream.send(reply)

    async with Server(broken) as server:
        http = client()
        with pytest.raises(OSError, match="node") as failed:
            await http.post(server.url, "/x", b"a", b"t")
        assert not isinstance(failed.value, NodeConnectError)
        await http.aclose()


async def test_a_slow_node_times_out_and_its_connection_is_dropped() -> None:
    async def slow_then_fine(stream: anyio.abc.SocketStream, number: int) -> None:
        body = await _read_request(stream)
        if number == 0:
            await anyio.sleep(10)
        await stream.send(_answer(body))
        await _echo_forever(stream, number)

    async with Server(slow_then_fine) as server:
        http = client(read_timeout=0.2)
        with pytest.raises(OSError, match="did not answer"):
            await http.post(server.url, "/x", b"a", b"t")
        assert await http.post(server.url, "/x", b"b", b"t") == b"b"
        assert server.connections == 2  # the timed-out one was not reused
        await http.aclose()


async def test_a_cancelled_request_never_leaves_its_connection_for_the_next() -> None:
    started = anyio.Event()

    async def hold_first(stream: anyio.abc.SocketStream, number: int) -> None:
        body = await _read_request(stream)
        if number == 0:
            started.set()
            await anyio.sleep(10)  # its answer would arrive after the cancel
        await stream.send(_answer(body))
        await _echo_forever(stream, number)

    async with Server(hold_first) as server:
        http = client()
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_when_started() -> None:
                    await started.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_when_started)
                await http.post(server.url, "/x", b"a", b"t")
        assert not scope.cancelled_caught
        assert await http.post(server.url, "/x", b"b", b"t") == b"b"
        assert server.connections == 2
        await http.aclose()


async def test_connection_close_answers_are_not_reused() -> None:
    async def close_after(stream: anyio.abc.SocketStream, number: int) -> None:
        body = await _read_request(stream)
        await stream.send(_answer(body, b"connection: close"))
        await _echo_forever(stream, number)  # would answer, but must not be asked

    async with Server(close_after) as server:
        http = client()
        for _ in range(3):
            assert await http.post(server.url, "/x", b"a", b"t") == b"a"
        assert server.connections == 3
        await http.aclose()


async def test_a_closed_client_refuses_at_once() -> None:
    async with Server(_echo_forever) as server:
        http = client()
        assert await http.post(server.url, "/x", b"a", b"t") == b"0:a"
        await http.aclose()
        with pytest.raises(NodeConnectError):
            await http.post(server.url, "/x", b"a", b"t")
