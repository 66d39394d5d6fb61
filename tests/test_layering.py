"""The import picture of ``src/pyobjects`` (issue #10).

Value modules (errors, ids, HTTP and WebSocket values, serialization, clocks,
statistics, storage) are leaves: they import nothing of the private core
package ``pyobjects._core``, not even for type checking, so a backend or a
value type can be used and reasoned about without the actor machinery. Outside
the core package the import graph has no cycle. Both are checked on the source
(every ``import``, including those under ``TYPE_CHECKING`` and inside
functions) and on what really runs (imports recorded while a small program
uses the library).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyobjects

SRC = Path(pyobjects.__file__).parent
CORE = "pyobjects._core"
VALUE_MODULES = {
    "pyobjects._aliases",
    "pyobjects._clock",
    "pyobjects._errors",
    "pyobjects._http",
    "pyobjects._ids",
    "pyobjects._owner",
    "pyobjects._registry",
    "pyobjects._serialization",
    "pyobjects._statistics",
    "pyobjects._telemetry_options",
    "pyobjects._version",
    "pyobjects._websocket",
    "pyobjects._ws_bridge",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def is_value(module: str) -> bool:
    return module in VALUE_MODULES or module.startswith("pyobjects.storage")


def node(module: str) -> str:
    """The graph node of *module*: the core package counts as one node."""
    return CORE if module.startswith(CORE + ".") else module


def _imported(module: str, stmt: ast.Import | ast.ImportFrom) -> set[str]:
    names: set[str] = set()
    if isinstance(stmt, ast.Import):
        names.update(alias.name for alias in stmt.names)
    else:
        base = stmt.module or ""
        if stmt.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package.pop()
            package = package[: len(package) - stmt.level + 1]
            base = ".".join([*package, base] if base else package)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in stmt.names)
    return {name for name in names if name in MODULES and name != module}


def source_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for stmt in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                edges |= _imported(module, stmt)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    collapsed: dict[str, set[str]] = {}
    for module, edges in graph.items():
        collapsed.setdefault(node(module), set()).update(
            node(e) for e in edges if node(e) != node(module)
        )
    for edges in list(collapsed.values()):
        for target in edges:
            collapsed.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in collapsed[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(collapsed):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle_and_a_core_import() -> None:
    # The checks below would pass vacuously if the graph were empty.
    graph = source_graph()
    assert "pyobjects._core._runtime" in graph["pyobjects._core._actor"]
    assert "pyobjects._errors" in graph["pyobjects._ids"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"pyobjects._core._x": {"pyobjects._core._y"}}) == []


def test_value_modules_import_nothing_of_the_core() -> None:
    graph = source_graph()
    offending = {
        module: sorted(e for e in edges if e.startswith(CORE))
        for module, edges in graph.items()
        if is_value(module) and any(e.startswith(CORE) for e in edges)
    }
    assert offending == {}


def test_no_import_cycle_outside_the_core_package() -> None:
    assert cycles(source_graph()) == []


_PROGRAM = textwrap.dedent(
    """
    import builtins, json, sys, tempfile

    edges = set()
    real_import = builtins.__import__

    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        module = real_import(name, globals, locals, fromlist, level)
        importer = (globals or {}).get("__name__", "")
        if importer.startswith("pyobjects"):
            target = module.__name__
            edges.add((importer, target))
            for item in fromlist or ():
                sub = f"{target}.{item}"
                if sub in sys.modules:
                    edges.add((importer, sub))
        return module

    builtins.__import__ = recording_import

    import anyio
    import pyobjects
    import pyobjects.asgi
    import pyobjects.testing
    from pyobjects.storage import SQLiteBackend

    class Counter(pyobjects.DurableObject):
        async def increment(self):
            n = (await self.ctx.storage.get("n") or 0) + 1
            self.ctx.storage.put("n", n)
            self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS t (x)")
            await self.ctx.storage.set_alarm(4 * 10**12)
            return n

        async def fetch(self, request):
            pair = pyobjects.WebSocketPair()
            self.ctx.accept_websocket(pair[1])
            return pyobjects.Response(None, status=101, websocket=pair[0])

        async def alarm(self):
            pass

    async def run_in(stub):
        return await pyobjects.testing.run_in_durable_object(
            stub, lambda obj, ctx: ctx.storage.kv.get("n")
        )

    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            storage = SQLiteBackend(tmp)
            async with pyobjects.Runtime(
                bindings={"C": Counter}, storage=storage
            ) as rt:
                stub = rt.env.C.get_by_name("a")
                assert await stub.increment() == 1
                response = await stub.fetch("https://x/")
                assert response.status == 101
                rt.statistics()
                assert await run_in(stub) == 1

    anyio.run(main)
    print(json.dumps(sorted(edges)))
    """
)


def test_what_runs_keeps_the_layering() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    graph: dict[str, set[str]] = {}
    for importer, target in json.loads(done.stdout):
        if target in MODULES and target != importer:
            graph.setdefault(importer, set()).add(target)
    assert len(graph) > 20  # the program really went through the library
    value_to_core = sorted(
        (m, e)
        for m, edges in graph.items()
        for e in edges
        if is_value(m) and e.startswith(CORE)
    )
    assert value_to_core == []
    assert cycles(graph) == []
