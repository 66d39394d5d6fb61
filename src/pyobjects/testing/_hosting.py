"""Keep async context managers open from a fixture's setup to its teardown.

anyio's cancel scopes (inside every :class:`~pyobjects.Runtime`, task group
and ASGI lifespan) must be left by the task that entered them. anyio's pytest
plugin and pytest-trio run an async fixture's setup and teardown in one task,
but pytest-asyncio runs them as two asyncio tasks, so a fixture that entered
a runtime inline failed at teardown with "Attempted to exit cancel scope in a
different task than it was entered in".

:class:`ContextHost` therefore enters the fixture's context managers in an
asyncio task of its own, which lives from the first :meth:`ContextHost.enter`
to :meth:`ContextHost.aclose`, whichever tasks call them. On trio (where no
plugin splits a fixture across tasks, and where a free-standing task would
have to be a system task) it enters them inline.
"""

from __future__ import annotations

import math
import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar, cast, final

import anyio
import sniffio

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from anyio.streams.memory import MemoryObjectSendStream

__all__ = ["ContextHost"]

T = TypeVar("T")


@final
class _Request:
    __slots__ = ("done", "error", "manager", "result")

    def __init__(self, manager: AbstractAsyncContextManager[Any]) -> None:
        self.manager = manager
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


@final
class ContextHost:
    """Enter async context managers in one task; leave them all in :meth:`aclose`."""

    __slots__ = (
        "_closed",
        "_error",
        "_finished",
        "_inline",
        "_requests",
        "_started",
        "_task",
    )

    def __init__(self) -> None:
        self._inline: AsyncExitStack | None = None
        self._requests: MemoryObjectSendStream[_Request] | None = None
        self._finished = anyio.Event()
        self._error: BaseException | None = None
        self._task: object = None  # a strong reference keeps the task alive
        self._started = False
        self._closed = False

    def _start(self) -> None:
        self._started = True
        if sniffio.current_async_library() != "asyncio":
            self._inline = AsyncExitStack()
            return
        send, receive = anyio.create_memory_object_stream[_Request](math.inf)
        self._requests = send
        # asyncio itself is the point here (a task independent of the
        # fixture's setup and teardown tasks), so take the module that runs
        # this loop rather than importing it (anyio only, elsewhere).
        asyncio = sys.modules["asyncio"]
        self._task = asyncio.get_running_loop().create_task(self._host(receive))

    async def _host(self, requests: Any) -> None:
        try:
            async with AsyncExitStack() as stack, requests:
                async for request in requests:
                    try:
                        request.result = await stack.enter_async_context(
                            request.manager
                        )
                    except Exception as exc:
                        request.error = exc
                    finally:
                        request.done.set()
        except Exception as exc:  # handed to aclose(), which raises it
            self._error = exc
        finally:
            self._finished.set()

    async def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter *manager*; return what its ``__aenter__`` returned.

        Raises:
            RuntimeError: If the host was closed.
        """
        if self._closed:
            raise RuntimeError("the fixture has been torn down already")
        if not self._started:
            self._start()
        if self._inline is not None:
            return await self._inline.enter_async_context(manager)
        assert self._requests is not None
        request = _Request(manager)
        try:
            self._requests.send_nowait(request)
        except anyio.BrokenResourceError:
            await self.aclose()  # the host task has ended: raise why
            raise RuntimeError("the fixture's host task has ended") from None
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return cast("T", request.result)

    async def aclose(self) -> None:
        """Leave every context entered, last first; raise what leaving raised."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if self._inline is not None:
            await self._inline.aclose()
            return
        assert self._requests is not None
        self._requests.close()
        await self._finished.wait()
        if self._error is not None:
            raise self._error
