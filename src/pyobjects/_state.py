"""``DurableObjectState``: the ``ctx`` every Durable Object receives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, final

import anyio

from ._aliases import camel_aliases

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator

    from ._actor import Actor
    from ._ids import DurableObjectId
    from .storage._api import Storage

__all__ = ["BlockConcurrencyHandle", "DurableObjectState"]

T = TypeVar("T")


@final
class BlockConcurrencyHandle(Generic[T]):
    """The result of ``block_concurrency_while``: await it for the callback's value.

    It is not a coroutine, so it may be left un-awaited (as in a constructor)
    without a warning.
    """

    __slots__ = ("_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def _set(self, result: T | None, error: BaseException | None) -> None:
        self._result = result
        self._error = error
        self._done.set()

    async def _wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()


@final
@camel_aliases("block_concurrency_while", "wait_until")
class DurableObjectState:
    """The state of one Durable Object instance (``ctx``); built by the runtime.

    Mirrors ``DurableObjectState`` in Workers. The constructor is private.
    """

    __slots__ = ("_actor", "id", "storage")

    id: DurableObjectId
    storage: Storage

    def __init__(self, actor: Actor) -> None:
        self._actor = actor
        self.id = actor.id
        self.storage = actor.storage

    def block_concurrency_while(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any
    ) -> BlockConcurrencyHandle[T]:
        """Run ``await fn(*args)`` while no other event may start in the object.

        May be called un-awaited from ``__init__`` (the first events wait for
        it) or awaited from a handler (returns ``fn``'s result). If ``fn``
        raises or runs past the runtime's ``block_concurrency_timeout`` (30 s
        by default), the object is reset and every waiting caller gets the
        error with ``durable_object_reset = True``.

        Raises:
            RuntimeError: When nested more than 64 deep.
        """
        return self._actor.block_concurrency_while(fn, args)

    def wait_until(self, awaitable: Awaitable[Any], /) -> None:
        """Keep the object alive until *awaitable* finishes (errors are logged)."""
        self._actor.wait_until(awaitable)

    def abort(self, reason: str | None = None) -> NoReturn:
        """Reset the object now: uncommitted writes are discarded.

        Raises the reset error; even if the code catches it, the instance is
        gone and every caller waiting on it gets the error. Mirrors
        ``ctx.abort()``.
        """
        self._actor.abort(reason)

    def now_ms(self) -> int:
        """Return the runtime clock's time in epoch milliseconds.

        Use it instead of ``time.time()`` so that tests with a manual clock
        are exact.
        """
        return self._actor.runtime.clock.now_ms()

    def __repr__(self) -> str:
        return f"<DurableObjectState {self.id!r}>"
