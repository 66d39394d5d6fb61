"""pyobjects: Cloudflare Durable Objects for any Python async application.

Subclass :class:`DurableObject`, bind it in a :class:`Runtime`, get ids and
stubs from ``rt.env.<BINDING>`` and call the object. See the docs for the
consistency model (input and output gates, write coalescing).
"""

from ._clock import Clock as Clock, SystemClock as SystemClock
from ._core._alarms import AlarmInfo as AlarmInfo
from ._core._hibernation import (
    WebSocketRequestResponsePair as WebSocketRequestResponsePair,
)
from ._core._namespace import (
    DurableObjectBinding as DurableObjectBinding,
    DurableObjectNamespace as DurableObjectNamespace,
)
from ._core._object import DurableObject as DurableObject
from ._core._rpc import (
    AsyncRpcMethod as AsyncRpcMethod,
    RpcMethod as RpcMethod,
    rpc as rpc,
)
from ._core._runtime import Env as Env, Runtime as Runtime
from ._core._state import (
    BlockConcurrencyHandle as BlockConcurrencyHandle,
    DurableObjectState as DurableObjectState,
)
from ._core._stub import (
    DurableObjectStub as DurableObjectStub,
    UntypedRpcMethod as UntypedRpcMethod,
)
from ._errors import (
    DurableObjectError as DurableObjectError,
    DurableObjectResetError as DurableObjectResetError,
    FetchError as FetchError,
    InvalidIdError as InvalidIdError,
    LeaseHeldError as LeaseHeldError,
    LeaseLostError as LeaseLostError,
    MessageTooLargeError as MessageTooLargeError,
    NodeUnreachableError as NodeUnreachableError,
    OverloadedError as OverloadedError,
    PyObjectsError as PyObjectsError,
    RuntimeClosedError as RuntimeClosedError,
    SerializationError as SerializationError,
    SqlError as SqlError,
    SqlTimeoutError as SqlTimeoutError,
    StorageError as StorageError,
    StorageFullError as StorageFullError,
    StorageInUseError as StorageInUseError,
    StorageLimitError as StorageLimitError,
    StorageUnavailableError as StorageUnavailableError,
    TransactionError as TransactionError,
    WebSocketError as WebSocketError,
    WebSocketLimitError as WebSocketLimitError,
    WebSocketStateError as WebSocketStateError,
)
from ._fetch import fetch as fetch
from ._http import Headers as Headers, Request as Request, Response as Response
from ._ids import DurableObjectId as DurableObjectId
from ._node import Node as Node
from ._prometheus import PrometheusCollector as PrometheusCollector
from ._registry import register_type as register_type
from ._statistics import (
    NamespaceStatistics as NamespaceStatistics,
    RuntimeStatistics as RuntimeStatistics,
)
from ._telemetry_options import OpenTelemetry as OpenTelemetry
from ._version import __version__ as __version__
from ._websocket import (
    WebSocket as WebSocket,
    WebSocketClose as WebSocketClose,
    WebSocketPair as WebSocketPair,
)
from ._websocket_client import connect_websocket as connect_websocket
from ._worker import (
    ExecutionContext as ExecutionContext,
    Worker as Worker,
    WorkerEntrypoint as WorkerEntrypoint,
)

__all__ = (
    "AlarmInfo",
    "AsyncRpcMethod",
    "BlockConcurrencyHandle",
    "Clock",
    "DurableObject",
    "DurableObjectBinding",
    "DurableObjectError",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectResetError",
    "DurableObjectState",
    "DurableObjectStub",
    "Env",
    "ExecutionContext",
    "FetchError",
    "Headers",
    "InvalidIdError",
    "LeaseHeldError",
    "LeaseLostError",
    "MessageTooLargeError",
    "NamespaceStatistics",
    "Node",
    "NodeUnreachableError",
    "OpenTelemetry",
    "OverloadedError",
    "PrometheusCollector",
    "PyObjectsError",
    "Request",
    "Response",
    "RpcMethod",
    "Runtime",
    "RuntimeClosedError",
    "RuntimeStatistics",
    "SerializationError",
    "SqlError",
    "SqlTimeoutError",
    "StorageError",
    "StorageFullError",
    "StorageInUseError",
    "StorageLimitError",
    "StorageUnavailableError",
    "SystemClock",
    "TransactionError",
    "UntypedRpcMethod",
    "WebSocket",
    "WebSocketClose",
    "WebSocketError",
    "WebSocketLimitError",
    "WebSocketPair",
    "WebSocketRequestResponsePair",
    "WebSocketStateError",
    "Worker",
    "WorkerEntrypoint",
    "connect_websocket",
    "fetch",
    "register_type",
    "rpc",
)

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
