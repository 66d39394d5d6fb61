"""A count of storage operations under way over a network (internal).

A server-backed store (PostgreSQL) counts its round trips here, so that the
testing clock's notion of "everything has settled" can include them: a task
waiting for a database answer looks blocked, yet the work it does is not
finished. Local backends never touch it.
"""

from __future__ import annotations

__all__ = ["operations"]


class _Counter:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


operations: _Counter = _Counter()
