"""Pluggable storage: the backend protocol and the built-in backends."""

from ._api import Storage as Storage
from ._base import (
    AlarmEntry as AlarmEntry,
    ListQuery as ListQuery,
    ObjectStore as ObjectStore,
    StorageBackend as StorageBackend,
    WriteBatch as WriteBatch,
)
from ._transaction import Transaction as Transaction
from .memory import MemoryBackend as MemoryBackend
from .sqlite import SQLiteBackend as SQLiteBackend

__all__ = (
    "AlarmEntry",
    "ListQuery",
    "MemoryBackend",
    "ObjectStore",
    "SQLiteBackend",
    "Storage",
    "StorageBackend",
    "Transaction",
    "WriteBatch",
)

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
