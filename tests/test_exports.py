"""The public surface: __all__ lists, public __module__, lazy testing import."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

PUBLIC_MODULES = [
    "pyobjects",
    "pyobjects.asgi",
    "pyobjects.storage",
    "pyobjects.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_a_sorted_tuple_of_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert isinstance(exported, tuple)
    assert list(exported) == sorted(exported)
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, type(sys)) and n != "annotations"
    }
    assert set(exported) == public


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_objects_have_the_public_module(name: str) -> None:
    module = importlib.import_module(name)
    for attr in module.__all__:
        obj = getattr(module, attr)
        if isinstance(obj, type) or inspect.isfunction(obj):
            assert obj.__module__ == name, attr


def test_import_pyobjects_does_not_import_testing() -> None:
    code = "import sys, pyobjects; print('pyobjects.testing' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_pyobjects_testing_works_without_pytest() -> None:
    # pytest (and hypothesis) are test tools of the user's choosing:
    # pyobjects.testing must import and work in a plain script without them.
    code = """
import sys
sys.modules["pytest"] = None  # any import of pytest now raises ImportError
sys.modules["hypothesis"] = None
import anyio
import pyobjects
from pyobjects.testing import ManualClock, run_in_durable_object

class Counter(pyobjects.DurableObject):
    async def incr(self) -> int:
        n = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", n)
        return n

async def main() -> None:
    async with pyobjects.Runtime(
        bindings={"C": Counter}, clock=ManualClock()
    ) as rt:
        stub = rt.env.C.get_by_name("a")
        await stub.incr()

        async def peek(obj: Counter, ctx: pyobjects.DurableObjectState) -> int:
            return await ctx.storage.get("n")

        print(await run_in_durable_object(stub, peek))

anyio.run(main)
print("pytest" in sys.modules and sys.modules["pytest"] is not None)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "False"]


def test_api_names_from_the_contract_exist() -> None:
    import pyobjects
    import pyobjects.storage
    import pyobjects.testing

    for name in [
        "DurableObject",
        "Runtime",
        "Request",
        "Response",
        "DurableObjectId",
        "DurableObjectStub",
        "DurableObjectNamespace",
        "DurableObjectState",
        "PyObjectsError",
        "InvalidIdError",
        "StorageLimitError",
        "SerializationError",
        "StorageError",
        "SqlError",
        "DurableObjectResetError",
        "OverloadedError",
        "RuntimeClosedError",
        "WebSocket",
        "WebSocketPair",
        "WebSocketClose",
        "WebSocketRequestResponsePair",
        "WebSocketError",
        "WebSocketLimitError",
        "WebSocketStateError",
    ]:
        assert hasattr(pyobjects, name), name
    assert issubclass(pyobjects.InvalidIdError, ValueError)
    assert issubclass(pyobjects.StorageLimitError, ValueError)
    assert issubclass(pyobjects.SerializationError, TypeError)
    assert issubclass(pyobjects.SqlError, pyobjects.StorageError)
    assert issubclass(pyobjects.WebSocketLimitError, ValueError)
    assert issubclass(pyobjects.WebSocketStateError, TypeError)
    assert issubclass(pyobjects.WebSocketError, pyobjects.PyObjectsError)
    for name in [
        "MemoryBackend",
        "SQLiteBackend",
        "StorageBackend",
        "SqlStorage",
        "SqlCursor",
        "SyncKV",
        "SqlObjectStore",
        "PitrObjectStore",
    ]:
        assert hasattr(pyobjects.storage, name), name
    # Cloudflare spellings of the SQL and PITR surface.
    for cls, names in [
        (
            pyobjects.storage.Storage,
            [
                "transactionSync",
                "getCurrentBookmark",
                "getBookmarkForTime",
                "onNextSessionRestoreBookmark",
            ],
        ),
        (pyobjects.storage.SqlStorage, ["databaseSize"]),
        (
            pyobjects.storage.SqlCursor,
            ["toArray", "columnNames", "rowsRead", "rowsWritten"],
        ),
    ]:
        for name in names:
            assert hasattr(cls, name), (cls, name)
    for name in [
        "ManualClock",
        "run_in_durable_object",
        "list_durable_object_ids",
        "evict",
    ]:
        assert hasattr(pyobjects.testing, name), name
