"""The pyobjects exception tree.

::

    PyObjectsError(Exception)
    ├── InvalidIdError(PyObjectsError, ValueError)   bad hex / id from another namespace
    ├── StorageError
    │   ├── StorageLimitError(StorageError, ValueError)  key/value/batch over a limit
    │   ├── SerializationError(StorageError, TypeError)  value the codec cannot encode
    │   ├── TransactionError(StorageError, RuntimeError) misuse of a transaction
    │   ├── StorageFullError                             the disk (or database) is full
    │   ├── StorageInUseError                            another Runtime uses the dir
    │   ├── StorageUnavailableError                      the database is unreachable
    │   ├── LeaseHeldError                               another owner holds the object
    │   ├── LeaseLostError                               a newer owner fenced this one
    │   └── SqlError                                     wraps sqlite3.Error
    │       └── SqlTimeoutError                          statement over the time limit
    ├── MessageTooLargeError(PyObjectsError, ValueError)  RPC message over 32 MiB
    ├── FetchError(PyObjectsError, OSError)  an outgoing pyobjects.fetch() failed
    ├── DurableObjectError       flags: retryable / overloaded / durable_object_reset
    │   ├── DurableObjectResetError   the instance was reset (abort, failed commit, ...)
    │   ├── OverloadedError           overloaded = True
    │   └── NodeUnreachableError      retryable: the object's node did not answer
    ├── RuntimeClosedError(PyObjectsError, RuntimeError)  use of a closed Runtime
    └── WebSocketError
        ├── WebSocketLimitError(WebSocketError, ValueError)  tags, sockets, sizes
        └── WebSocketStateError(WebSocketError, TypeError)   wrong state for the call

Any exception that resets an object reaches the callers waiting on it with the
attribute ``durable_object_reset = True`` set on it (Cloudflare's
``durableObjectReset``), whatever its type.
"""

from __future__ import annotations

import os

__all__ = [
    "DurableObjectError",
    "DurableObjectResetError",
    "FetchError",
    "InvalidIdError",
    "LeaseHeldError",
    "LeaseLostError",
    "MessageTooLargeError",
    "NodeUnreachableError",
    "OverloadedError",
    "PyObjectsError",
    "RuntimeClosedError",
    "SerializationError",
    "SqlError",
    "SqlTimeoutError",
    "StorageError",
    "StorageFullError",
    "StorageInUseError",
    "StorageLimitError",
    "StorageUnavailableError",
    "TransactionError",
    "WebSocketError",
    "WebSocketLimitError",
    "WebSocketStateError",
]


class PyObjectsError(Exception):
    """Root of every error raised by pyobjects itself."""


class InvalidIdError(PyObjectsError, ValueError):
    """A Durable Object id string is malformed or belongs to another namespace."""


class StorageError(PyObjectsError):
    """A storage operation failed."""


_LIMIT_MESSAGES = {
    "key": (
        "Keys cannot be larger than {limit} bytes. A key of size {size} was provided."
    ),
    "value": (
        "Values cannot be larger than {limit} bytes. "
        "A value of size {size} was provided."
    ),
    "batch": (
        "Maximum number of key value pairs is {limit}. {size} pairs were provided."
    ),
}


class StorageLimitError(StorageError, ValueError):
    """A key, a value or a batch is over one of the storage limits.

    The message names the limit and the size given (Cloudflare's wording);
    ``kind`` (``"key"``, ``"value"`` or ``"batch"``), ``limit`` and ``size``
    hold them as fields.
    """

    def __init__(self, kind: str, *, limit: int, size: int) -> None:
        self.kind = kind
        self.limit = limit
        self.size = size
        super().__init__(_LIMIT_MESSAGES[kind].format(limit=limit, size=size))


class SerializationError(StorageError, TypeError):
    """A value cannot be encoded by the storage codec."""


class MessageTooLargeError(PyObjectsError, ValueError):
    """An RPC argument list or result is over the 32 MiB message limit.

    ``limit`` and ``size`` hold the limit and the encoded size in bytes.
    """

    def __init__(self, *, limit: int, size: int) -> None:
        self.limit = limit
        self.size = size
        super().__init__(
            f"Serialized RPC arguments or return values are limited to "
            f"{limit // (1024 * 1024)}MiB, but the size of this value was: "
            f"{size} bytes."
        )


class FetchError(PyObjectsError, OSError):
    """An outgoing :func:`pyobjects.fetch` got no response.

    The connection failed, timed out or broke, or a redirect came back with
    ``redirect="error"``; the underlying httpx error, if any, is the
    ``__cause__``. Workers rejects ``fetch()`` with a ``TypeError`` here.
    """

    def __init__(self, method: str, url: str, reason: str) -> None:
        self.method = method
        self.url = url
        self.reason = reason
        super().__init__(f"fetch {method} {url} failed: {reason}")


class TransactionError(StorageError, RuntimeError):
    """A transaction was used after it finished or was rolled back, or misused."""


class StorageFullError(StorageError):
    """The disk, or the database, has no room for a write (``SQLITE_FULL``).

    Nothing of the write was kept: a batch that fails to commit this way is
    rolled back whole, and the object is reset (its callers get a
    :class:`DurableObjectResetError` whose ``__cause__`` is this error). The
    object works again once space is freed. ``target`` names what could not
    be written (``"object <namespace>/<id>"``, ``"the alarm index"``) and
    ``detail`` is what the operating system or SQLite said.
    """

    def __init__(self, *, action: str, target: str, detail: str) -> None:
        self.action = action
        self.target = target
        self.detail = detail
        super().__init__(
            f"cannot {action} {target}: the disk or the database is full "
            f"({detail}); nothing of this write was kept. Free some space "
            "and try again"
        )


class StorageInUseError(StorageError):
    """Another runtime owns the storage directory (its lock file is held).

    Raised when a :class:`~pyobjects.Runtime` starts on a ``SQLiteBackend``
    directory that a running runtime, in this process or another one, already
    uses. ``directory`` is the directory and ``pid`` the process holding it
    (``None`` if it could not be read).
    """

    def __init__(self, *, directory: str, pid: int | None) -> None:
        self.directory = directory
        self.pid = pid
        if pid is None:
            holder = "another Runtime (its PID could not be read)"
        elif pid == os.getpid():
            holder = f"another Runtime of this process (PID {pid})"
        else:
            holder = f"process {pid}"
        super().__init__(
            f"storage directory {directory!r} is in use by {holder}: only one "
            "Runtime at a time may run on a SQLiteBackend directory; stop that "
            "one first, or use another directory"
        )


class StorageUnavailableError(StorageError):
    """The storage server could not be reached (PostgreSQL down or restarting).

    Transient: pyobjects already retried a few times before raising it, and
    the same call may succeed later (``retryable`` is ``True``). A commit
    that fails this way resets the object (its callers get a retryable
    :class:`DurableObjectResetError` caused by this error); whether the
    commit reached the database is decided by the database alone, and the
    next instance reads whatever it holds.
    """

    retryable: bool = True


class LeaseHeldError(StorageError):
    """Another owner (a runtime on the same PostgreSQL database) holds the object.

    Raised when an object cannot start because its lease belongs to another
    process whose lease has not expired. ``owner`` names that owner and
    ``expires_in`` is how many seconds its lease still runs (by the database
    clock) unless renewed. Retrying after that may succeed (``retryable`` is
    ``True``: the call did not run).
    """

    retryable: bool = True

    def __init__(
        self, *, namespace: str, object_id: str, owner: str, expires_in: float
    ) -> None:
        self.namespace = namespace
        self.object_id = object_id
        self.owner = owner
        self.expires_in = expires_in
        super().__init__(
            f"Durable Object {namespace}/{object_id} is held by {owner} (its "
            f"lease runs for {max(expires_in, 0.0):.1f} s more): only one live "
            "instance of an object may exist, so it cannot start here now"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments: the default (type, args) cannot rebuild it,
        # and a copy (what every caller of a reset instance gets) must keep
        # the type and the owner, which the cluster's routing follows.
        return (
            _lease_held_error,
            (self.namespace, self.object_id, self.owner, self.expires_in),
        )


def _lease_held_error(
    namespace: str, object_id: str, owner: str, expires_in: float
) -> LeaseHeldError:
    return LeaseHeldError(
        namespace=namespace, object_id=object_id, owner=owner, expires_in=expires_in
    )


class LeaseLostError(StorageError):
    """A commit was refused because a newer owner took the object over.

    The lease of this instance expired and another owner (with a higher
    epoch) took it: nothing of the refused batch was kept, and the instance
    is reset. ``epoch`` is the epoch this instance held.
    """

    def __init__(self, *, namespace: str, object_id: str, epoch: int) -> None:
        self.namespace = namespace
        self.object_id = object_id
        self.epoch = epoch
        super().__init__(
            f"commit to Durable Object {namespace}/{object_id} refused: its "
            f"lease (epoch {epoch}) was taken over by a newer owner; nothing of "
            "this batch was kept"
        )


class SqlError(StorageError):
    """SQLite rejected a statement; the original ``sqlite3.Error`` is the cause.

    The message reads ``<SQLite's message>: SQLITE_<CODE>`` as in Cloudflare.
    ``code`` is SQLite's primary result code name (``"SQLITE_CONSTRAINT"``),
    ``extended_code`` the extended one (``"SQLITE_CONSTRAINT_UNIQUE"``) and
    ``sqlite_message`` SQLite's own text; all three are ``None`` for errors
    raised by pyobjects itself (a wrong binding count, say).
    """

    code: str | None = None
    extended_code: str | None = None
    sqlite_message: str | None = None


class SqlTimeoutError(SqlError):
    """A call into SQLite for user SQL ran longer than the statement time limit.

    SQLite interrupts it (``SQLITE_INTERRUPT``) and undoes what it wrote, so
    that one object's long query cannot stall every object of the process.
    ``limit`` holds the limit in seconds (``Runtime(sql_statement_timeout=)``).
    """

    code: str | None = "SQLITE_INTERRUPT"
    extended_code: str | None = "SQLITE_INTERRUPT"
    sqlite_message: str | None = "interrupted"
    limit: float

    def __init__(self, *, limit: float) -> None:
        self.limit = limit
        super().__init__(
            f"SQL statement interrupted: it ran longer than the {limit:g} s "
            "statement time limit (Runtime(sql_statement_timeout=...)): "
            "SQLITE_INTERRUPT"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_timeout_error, (self.limit,))


def _timeout_error(limit: float) -> SqlTimeoutError:
    return SqlTimeoutError(limit=limit)


class DurableObjectError(PyObjectsError):
    """An infrastructure error of the Durable Object runtime.

    Carries Cloudflare's flags as attributes: ``retryable`` (the call may be
    retried if it is idempotent), ``overloaded`` (do not retry) and
    ``durable_object_reset`` (the instance was reset).
    """

    retryable: bool = False
    overloaded: bool = False
    durable_object_reset: bool = False
    remote: bool = True


class DurableObjectResetError(DurableObjectError):
    """The Durable Object instance was reset and its in-memory state dropped."""

    retryable = True
    durable_object_reset = True


class OverloadedError(DurableObjectError):
    """The Durable Object is overloaded; back off instead of retrying at once."""

    overloaded = True


class NodeUnreachableError(DurableObjectError):
    """The cluster node holding the object did not answer (it may be down).

    Retryable: once its lease runs out, another node takes the object over.
    Whether the call ran there is unknown.
    """

    retryable = True


class RuntimeClosedError(PyObjectsError, RuntimeError):
    """The Runtime is not running (not entered yet, or already closed)."""


class WebSocketError(PyObjectsError):
    """A WebSocket was used in a way Cloudflare refuses."""


_WEBSOCKET_LIMIT_MESSAGES = {
    "tags": "a Hibernatable WebSocket cannot have more than {limit} tags",
    "tag": '"{tag}" is longer than the max tag length ({limit} characters).',
    "sockets": (
        "only {limit} websockets can be accepted on a single Durable Object instance"
    ),
    # Cloudflare's message, missing space included.
    "attachment": (
        "A WebSocket 'attachment' cannot be larger than {limit} bytes."
        "'attachment' was {size} bytes."
    ),
    "auto_request": (
        "Request cannot be larger than {limit} bytes. "
        "A request of size {size} was provided."
    ),
    "auto_response": (
        "Response cannot be larger than {limit} bytes. "
        "A response of size {size} was provided."
    ),
    "event_timeout": "Event timeout should not exceed {limit} ms.",
    "message": (
        "WebSocket messages cannot be larger than {limit} bytes. "
        "A message of size {size} was provided."
    ),
}


class WebSocketLimitError(WebSocketError, ValueError):
    """A WebSocket limit was exceeded (Cloudflare's limits and messages).

    ``kind`` names the limit: ``"tags"`` (tags per socket), ``"tag"`` (bytes
    per tag), ``"sockets"`` (hibernatable sockets per object),
    ``"attachment"``, ``"auto_request"``, ``"auto_response"``,
    ``"event_timeout"`` or ``"message"``; ``limit`` and ``size`` hold the
    limit and the size given.
    """

    def __init__(self, kind: str, *, limit: int, size: int, tag: str = "") -> None:
        self.kind = kind
        self.limit = limit
        self.size = size
        super().__init__(
            _WEBSOCKET_LIMIT_MESSAGES[kind].format(limit=limit, size=size, tag=tag)
        )


class WebSocketStateError(WebSocketError, TypeError):
    """A WebSocket method was called in a state that does not allow it.

    For example ``send()`` before ``accept()``, ``accept()`` on a socket
    given to ``ctx.accept_websocket()``, or ``get_tags()`` on a socket that is
    not hibernatable. A ``TypeError``, as most of these are in Workers.
    """
