"""Whether a cancel scope may be entered around a handler that already started.

An event's handler runs its first step before the pipeline knows whether it
will suspend; only a handler that suspends needs the reset cancel scope (a
scope costs 5-15 µs, several times a whole call that does not suspend). A
scope may be entered after that first step only if the step left no cancel
scope of its own open (anyio requires scopes to nest). :func:`marker_for`
returns a function giving the identity of the current task's innermost
cancel scope, so the pipeline can compare it before and after the step.

It reads one private attribute of each backend (anyio's asyncio task states,
trio's task cancel status). If they are missing (a future anyio or trio),
the marker is always unknown, and a suspended handler is then failed by a
reset at its next resumption instead of at once.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["UNKNOWN", "marker_for"]

UNKNOWN: Any = object()  # never equal to a marker taken earlier


def _unknown() -> Any:
    return UNKNOWN


def marker_for(library: str) -> Callable[[], Any]:
    """The scope-marker function for the async library the runtime runs on."""
    try:
        if library == "asyncio":
            from anyio._backends._asyncio import _task_states

            asyncio = sys.modules["asyncio"]
            current_tasks: dict[Any, Any] = asyncio.tasks._current_tasks
            get_running_loop = asyncio.get_running_loop

            # Every event on the fast path takes a marker: asyncio.current_task()
            # is Python code and a WeakKeyDictionary lookup builds a weakref,
            # so look the task up in C and remember the last task's state
            # (anyio keeps one state object per task for the task's life).
            last: list[Any] = [UNKNOWN, None]

            def asyncio_marker() -> Any:
                task: Any = current_tasks.get(get_running_loop())
                if task is last[0]:
                    return last[1].cancel_scope
                state = _task_states.get(task)
                if state is None:
                    return None
                last[0] = task
                last[1] = state
                return state.cancel_scope

            asyncio_marker()  # fails here, not later, if the internals moved
            return asyncio_marker
        if library == "trio":
            import trio

            current = trio.lowlevel.current_task

            def trio_marker() -> Any:
                return current()._cancel_status

            trio_marker()
            return trio_marker
    except Exception:  # pragma: no cover - internals of another version
        pass
    return _unknown  # pragma: no cover - another backend or version
