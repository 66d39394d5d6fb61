"""The node-to-node connections themselves (loopback, real PostgreSQL)."""

from __future__ import annotations

import socket

from pyobjects import DurableObject, Node, Runtime
from pyobjects.storage import PostgresBackend


class Where(DurableObject):
    async def where(self) -> str:
        return str(self.env.NODE)


def node(dsn: str, schema: str, name: str) -> Runtime:
    return Runtime(
        bindings={"W": Where},
        storage=PostgresBackend(dsn, schema=schema, lease_ttl=2),
        vars={"NODE": name},
        node=Node(),
    )


async def test_the_node_endpoint_turns_nagle_off(database: tuple[str, str]) -> None:
    # With Nagle's algorithm on, an answer written in two parts on a kept-alive
    # connection waits for the caller's delayed ACK: about 40 ms per forwarded
    # call instead of well under one.
    dsn, name = database
    async with node(dsn, name, "a") as a, node(dsn, name, "b") as b:
        holder = await a.env.W.get_by_name("x").where()
        other = b if holder == "a" else a
        home = a if holder == "a" else b
        for _ in range(3):  # forwarded, over one kept-alive connection
            assert await other.env.W.get_by_name("x").where() == holder
        assert home._cluster is not None
        connections = home._cluster._server.server_state.connections
        assert connections
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
