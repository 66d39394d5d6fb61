"""``Node``: the options of one cluster node (``Runtime(node=...)``)."""

from __future__ import annotations

import typing
from dataclasses import dataclass

__all__ = ["Node"]


@typing.final
@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """How a runtime takes part in a cluster: ``Runtime(node=Node(...))``.

    Every runtime on the same PostgreSQL database and schema with a ``node``
    is one node of one cluster: any node answers a call for any object, by
    running it itself or forwarding it to the node that holds it.

    Args:
        host: The interface the node endpoint listens on.
        port: Its TCP port (``0``: a free one).
        url: The address other nodes use to reach this one (default:
            ``http://host:port`` with the port actually bound).
    """

    host: str = "127.0.0.1"
    port: int = 0
    url: str | None = None
