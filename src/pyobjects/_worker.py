"""``Worker``: a worker's ``fetch`` entry point bundled with its bindings.

A :class:`Worker` is what a wrangler configuration describes: the code that
receives requests (a ``fetch`` function, or a :class:`WorkerEntrypoint`
subclass) plus the Durable Object bindings and vars it gets as ``env``. It
runs nothing by itself; :class:`pyobjects.asgi.App` serves it.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, cast, final

from typing_extensions import TypeVar

from ._aliases import camel_aliases
from ._core._namespace import DurableObjectBinding
from ._core._runtime import Env
from ._http import Request, Response

if TYPE_CHECKING:
    from ._core._object import DurableObject

__all__ = ["ExecutionContext", "FetchHandler", "Worker", "WorkerEntrypoint"]

logger = logging.getLogger("pyobjects")

FetchHandler: TypeAlias = Callable[..., Awaitable[Response]]
"""``async def fetch(request, env)`` or ``async def fetch(request, env, ctx)``."""


@final
@camel_aliases("wait_until", "pass_through_on_exception")
class ExecutionContext:
    """The ``ctx`` of one worker invocation (``ExecutionContext`` in Workers).

    Built by the server for each request; the constructor is private.
    """

    __slots__ = ("_spawn",)

    def __init__(self, spawn: Callable[[Awaitable[Any]], None]) -> None:
        self._spawn = spawn

    def wait_until(self, awaitable: Awaitable[Any], /) -> None:
        """Keep working on *awaitable* after the response has been sent.

        It runs in the runtime's task group; an exception it raises is
        logged. When the server stops, it waits up to 30 s for such work
        (Cloudflare's grace period) before the runtime flushes and closes.
        """
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"wait_until() takes an awaitable, not {type(awaitable).__name__}"
            )
        self._spawn(awaitable)

    def pass_through_on_exception(self) -> None:
        """Accept and ignore: there is no origin server to fall back to."""


WorkerEnvT = TypeVar("WorkerEnvT", default=Env)


class WorkerEntrypoint(Generic[WorkerEnvT]):
    """Base class for the class form of a worker (Cloudflare's ``WorkerEntrypoint``).

    Subclass it and define ``async def fetch(self, request) -> Response``; pass
    the class to :class:`Worker`. A new instance is made for every request, as
    in Workers, so instance attributes never leak between requests; keep
    shared state in Durable Objects. ``self.env`` and ``self.ctx`` are set by
    the constructor. ``WorkerEntrypoint[AppEnv]`` declares the type of
    ``self.env`` (see the typing guide); a bare one has an :class:`Env`.
    """

    env: WorkerEnvT
    ctx: ExecutionContext

    def __init__(self, ctx: ExecutionContext, env: WorkerEnvT) -> None:
        self.ctx = ctx
        self.env = env

    async def fetch(self, request: Request) -> Response:
        """Handle one HTTP request (or WebSocket upgrade); override this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define `async def fetch(self, request)`"
        )


class _Mode(enum.Enum):
    FUNCTION = "fetch(request, env)"
    FUNCTION_WITH_CTX = "fetch(request, env, ctx)"
    ENTRYPOINT = "WorkerEntrypoint"


def _takes_ctx(fn: Callable[..., Any]) -> bool:
    """True if *fn* accepts a third positional argument (``ctx``)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins without one
        return False
    positional = 0
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return True
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


def _wrangler_bindings(
    bindings: Mapping[str, type[DurableObject] | DurableObjectBinding], name: str
) -> dict[str, type[DurableObject] | DurableObjectBinding]:
    if not isinstance(cast("object", name), str) or not name:
        raise TypeError(f"Worker(name=...) must be a non-empty str, got {name!r}")
    out: dict[str, type[DurableObject] | DurableObjectBinding] = {}
    for binding, spec in bindings.items():
        if isinstance(spec, DurableObjectBinding):
            if spec.unique_key is None:
                spec = DurableObjectBinding.wrangler(
                    spec.object_class, worker_name=name
                )
        elif isinstance(spec, type):
            spec = DurableObjectBinding.wrangler(spec, worker_name=name)
        out[binding] = spec  # anything else: Runtime() reports it
    return out


@final
class Worker:
    """A worker: its ``fetch`` entry point plus the bindings it runs with.

    ``fetch`` is ``async def fetch(request, env) -> Response`` (a third
    parameter, if present, receives the :class:`ExecutionContext`, as in a
    Cloudflare module worker), or a :class:`WorkerEntrypoint` subclass.
    ``bindings`` and ``vars`` become ``env``, exactly as for
    :class:`~pyobjects.Runtime`. Serve it with :class:`pyobjects.asgi.App` or
    ``pyobjects serve module:worker``.

    ``name`` is the worker's name (``name`` in a wrangler config). With it,
    every binding without a pinned ``unique_key`` is keyed the way
    ``wrangler dev`` keys it, ``"<name>-<class name>"``
    (:meth:`DurableObjectBinding.wrangler`), so the same names give the same
    ids as under wrangler; without it, namespaces are keyed by binding name.
    """

    __slots__ = ("_mode", "bindings", "fetch", "name", "vars")

    fetch: FetchHandler | type[WorkerEntrypoint[Any]]
    name: str | None
    _mode: _Mode
    bindings: Mapping[str, type[DurableObject] | DurableObjectBinding]
    vars: Mapping[str, Any]

    def __init__(
        self,
        fetch: FetchHandler | type[WorkerEntrypoint[Any]],
        *,
        bindings: Mapping[str, type[DurableObject] | DurableObjectBinding],
        vars: Mapping[str, Any] | None = None,  # noqa: A002  # Cloudflare's name
        name: str | None = None,
    ) -> None:
        if isinstance(fetch, type):
            if not issubclass(fetch, WorkerEntrypoint):
                raise TypeError(
                    "Worker() takes an async fetch function or a WorkerEntrypoint "
                    f"subclass, not the class {fetch.__name__}"
                )
            if fetch.fetch is WorkerEntrypoint.fetch:
                raise TypeError(f"{fetch.__name__} does not define fetch()")
            self._mode = _Mode.ENTRYPOINT
        elif callable(fetch):
            takes_ctx = _takes_ctx(fetch)
            self._mode = _Mode.FUNCTION_WITH_CTX if takes_ctx else _Mode.FUNCTION
        else:
            raise TypeError(
                "Worker() takes an async fetch function or a WorkerEntrypoint "
                f"subclass, not {type(fetch).__name__}"
            )
        if not isinstance(bindings, Mapping):
            raise TypeError(
                f"bindings must be a mapping, not {type(bindings).__name__}"
            )
        if name is not None:
            bindings = _wrangler_bindings(bindings, name)
        self.fetch = fetch
        self.name = name
        self.bindings = MappingProxyType(dict(bindings))
        self.vars = MappingProxyType(dict(vars or {}))

    async def _dispatch(
        self, request: Request, env: Env, spawn: Callable[[Awaitable[Any]], None]
    ) -> Response:
        """Run the entry point for one request and check what it returns.

        *spawn* runs ``ctx.wait_until()`` work; the context is built only for
        entry points that take one.
        """
        fetch: Any = self.fetch
        mode = self._mode
        if mode is _Mode.FUNCTION:
            response = await fetch(request, env)
        elif mode is _Mode.FUNCTION_WITH_CTX:
            response = await fetch(request, env, ExecutionContext(spawn))
        else:
            response = await fetch(ExecutionContext(spawn), env).fetch(request)
        if not isinstance(response, Response):
            hint = ""
            if inspect.isawaitable(response):
                hint = " (an awaitable: is an `await` missing?)"
                if inspect.iscoroutine(response):
                    response.close()  # no "never awaited" warning on top
            raise TypeError(
                f"the worker's fetch() must return a pyobjects.Response, "
                f"not {type(response).__name__}{hint}"
            )
        return response

    def __repr__(self) -> str:
        name = getattr(self.fetch, "__qualname__", repr(self.fetch))
        return f"<Worker {name} bindings={sorted(self.bindings)}>"
