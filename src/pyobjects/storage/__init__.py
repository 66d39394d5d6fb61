"""Pluggable storage: the backend protocol and the built-in backends."""

from ._api import Storage as Storage
from ._base import (
    AlarmEntry as AlarmEntry,
    ListQuery as ListQuery,
    ObjectStore as ObjectStore,
    PitrObjectStore as PitrObjectStore,
    SqlObjectStore as SqlObjectStore,
    StorageBackend as StorageBackend,
    WriteBatch as WriteBatch,
)
from ._sql import SqlCursor as SqlCursor, SqlStorage as SqlStorage
from ._sync_kv import SyncKV as SyncKV
from ._transaction import Transaction as Transaction
from .memory import MemoryBackend as MemoryBackend
from .postgres import PostgresBackend as PostgresBackend
from .sqlite import SQLiteBackend as SQLiteBackend

__all__ = (
    "AlarmEntry",
    "ListQuery",
    "MemoryBackend",
    "ObjectStore",
    "PitrObjectStore",
    "PostgresBackend",
    "SQLiteBackend",
    "SqlCursor",
    "SqlObjectStore",
    "SqlStorage",
    "Storage",
    "StorageBackend",
    "SyncKV",
    "Transaction",
    "WriteBatch",
)

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
