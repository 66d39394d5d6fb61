"""pyobjects: Cloudflare Durable Objects for any Python async application."""

from ._errors import (
    DurableObjectError as DurableObjectError,
    DurableObjectResetError as DurableObjectResetError,
    InvalidIdError as InvalidIdError,
    OverloadedError as OverloadedError,
    PyObjectsError as PyObjectsError,
    RuntimeClosedError as RuntimeClosedError,
    SerializationError as SerializationError,
    SqlError as SqlError,
    StorageError as StorageError,
    StorageLimitError as StorageLimitError,
    TransactionError as TransactionError,
)
from ._version import __version__ as __version__
