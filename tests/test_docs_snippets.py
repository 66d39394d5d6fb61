"""Every ```python block in README.md and docs/ runs, page by page.

The conventions, for whoever writes docs:

- A page's blocks run in order, in one namespace, in a fresh directory: a
  block may use what an earlier block of the same page defined, as a reader
  would. Top-level ``await`` runs on an asyncio event loop of its own.
- A block whose first line is ``# name.py`` is also written to that file, so
  that later blocks (and tests) can import it. ``# test_*.py`` blocks are
  test modules: they are not executed in the page's namespace but run with
  pytest once the page's other blocks have run, and all their tests must
  pass.
- A block whose last line is ``# SomeError: message`` must raise that error,
  with a message that starts so, from its last statement.
- An HTML comment on the line before a block changes how it runs:
  ``<!-- docs-test: inside <Class> -->`` runs it as the body of a method of
  an object of the page's ``<Class>`` (``self``, ``ctx`` and ``sql`` are
  bound; storage persists from one such block to the next);
  ``<!-- docs-test: serve <module>:<worker> -->`` serves the page's worker
  with uvicorn on a free port and points the block's ``127.0.0.1:8787``
  there; ``<!-- docs-test: path <dir> -->`` puts the repository's ``<dir>``
  first on ``sys.path``, for a page about one of the examples;
  ``<!-- docs-test: postgres -->`` runs it against the test suite's
  PostgreSQL server (``tests/postgres.py``: a skip without one, a failure in
  CI), with its DSN for ``postgresql://127.0.0.1:5432/test`` and a fresh
  ``schema``, dropped afterwards;
  ``<!-- docs-test: skip: <reason> -->`` leaves the block out (code for
  Cloudflare, an outside network, a template for the reader's own project).
  Keep skips few; the reason is required.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio
import pytest

from pyobjects import Runtime, _registry
from pyobjects.asgi import App
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import run_in_durable_object
from pyobjects.testing._clients import ServerThread

from .postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    from collections.abc import Callable


ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")],
    key=lambda p: p.relative_to(ROOT).as_posix(),
)
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->\s*\Z")
_FILE = re.compile(r"# ([\w/]+\.py)\n")
_INNER_INI = """\
[pytest]
addopts = -p no:asyncio -p no:cacheprovider
filterwarnings = error
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    line: int
    source: str
    directive: str | None
    filename: str | None


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        directive = _DIRECTIVE.search(before)
        file = _FILE.match(match.group(1))
        found.append(
            Block(
                line=text.count("\n", 0, match.start()) + 2,
                source=match.group(1),
                directive=directive.group(1) if directive else None,
                filename=file.group(1) if file else None,
            )
        )
    return found


_EXPECTED_ERROR = re.compile(r"# (\w+(?:Error|Exception)): (.+)")


def run_block(
    source: str,
    namespace: dict[str, Any],
    where: str,
    *,
    inside: Callable[[Callable[[dict[str, Any]], Any]], None] | None = None,
) -> None:
    """Run *source* in *namespace* (by *inside*, when given); check its error."""
    code = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    is_async = bool(code.co_flags & inspect.CO_COROUTINE)
    last = source.rstrip().rpartition("\n")[2]
    expected = _EXPECTED_ERROR.fullmatch(last)

    async def run_async(scope: dict[str, Any]) -> None:
        await eval(code, scope)

    def run(scope: dict[str, Any]) -> Any:
        if is_async:
            return run_async(scope)  # awaited by *inside*
        exec(code, scope)
        return None

    def execute() -> None:
        if inside is not None:
            inside(run)
        elif is_async:
            anyio.run(run_async, namespace)
        else:
            run(namespace)

    if expected is None:
        execute()
        return
    name, message = expected.groups()
    pattern = "^" + re.escape(message.removesuffix("..."))
    with pytest.raises(Exception, match=pattern) as info:
        execute()
    assert type(info.value).__name__ == name, f"{where}: raised {info.value!r}"


def object_runner(
    class_name: str, namespace: dict[str, Any], directory: Path
) -> Callable[[Callable[[dict[str, Any]], Any]], None]:
    """Run a block as the body of a method of a ``class_name`` object."""
    cls = namespace[class_name]

    def inside(run: Callable[[dict[str, Any]], Any]) -> None:
        async def body(instance: Any, ctx: Any) -> None:
            scope = {**namespace, "self": instance, "ctx": ctx, "sql": ctx.storage.sql}
            result = run(scope)
            if inspect.isawaitable(result):
                await result

        async def main() -> None:
            storage = SQLiteBackend(directory / ".docs-objects")
            async with Runtime(bindings={class_name: cls}, storage=storage) as rt:
                await run_in_durable_object(
                    rt.env[class_name].get_by_name("docs"), body
                )

        anyio.run(main)

    return inside


_DOCS_DSN = "postgresql://127.0.0.1:5432/test"
_SCHEMA = re.compile(r'schema="[^"]*"')


def postgres(source: str, namespace: dict[str, Any], where: str) -> None:
    dsn = require_postgres()
    schema = new_schema()
    assert _DOCS_DSN in source, f"{where}: no {_DOCS_DSN} to point at the server"
    source = _SCHEMA.sub(f'schema="{schema}"', source.replace(_DOCS_DSN, dsn))
    try:
        run_block(source, namespace, where)
    finally:
        drop_schema(dsn, schema)


def serve(spec: str, source: str, namespace: dict[str, Any], where: str) -> None:
    module_name, _, attr = spec.partition(":")
    worker = getattr(importlib.import_module(module_name), attr)
    server = ServerThread(App(worker))
    url = server.start()
    try:
        address = url.removeprefix("http://")
        run_block(source.replace("127.0.0.1:8787", address), namespace, where)
    finally:
        server.stop()


def test_every_page_is_checked() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/testing.md", "docs/guides/http.md"} <= names
    assert sum(len(blocks(p)) for p in PAGES) > 50


@final
class _Outcomes:
    """A plugin for the inner pytest run: count what passed, keep what failed."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.failed.append(f"{report.nodeid}\n{report.longreprtext}")
        elif report.when == "call" and report.passed:
            self.passed += 1


def run_page(page: Path, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run *page*'s blocks in *directory*, then its test modules.

    No pytester here: it drops every module imported during a test, and a
    second import of a C-extension library (uvicorn's httptools) breaks it.
    Only the page's own modules are forgotten afterwards.
    """
    monkeypatch.chdir(directory)
    monkeypatch.syspath_prepend(str(directory))
    before = set(sys.modules)
    local = [str(directory)]  # where the page's own modules come from
    # register_type() is process-wide: forget what the page registered.
    registered = dict(_registry.BY_TYPE), dict(_registry.BY_NAME)
    try:
        _run_page(page, directory, monkeypatch, local)
    finally:
        _registry.BY_TYPE.clear()
        _registry.BY_TYPE.update(registered[0])
        _registry.BY_NAME.clear()
        _registry.BY_NAME.update(registered[1])
        for name in set(sys.modules) - before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(tuple(local)):
                del sys.modules[name]


def _run_page(
    page: Path, directory: Path, monkeypatch: pytest.MonkeyPatch, local: list[str]
) -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    tests: list[Block] = []
    for block in blocks(page):
        where = f"{page.name}:{block.line}"
        directive = block.directive or ""
        if directive.startswith("skip"):
            assert directive.partition(":")[2].strip(), f"{where}: skip needs a reason"
            continue
        if block.filename is not None:
            (directory / block.filename).write_text(block.source)
            if Path(block.filename).name.startswith("test_"):
                tests.append(block)
                continue
        verb, _, argument = directive.partition(" ")
        if verb == "serve":
            serve(argument, block.source, namespace, where)
        elif verb == "inside":
            inside = object_runner(argument, namespace, directory)
            run_block(block.source, namespace, where, inside=inside)
        elif verb == "postgres":
            postgres(block.source, namespace, where)
        elif verb == "path":
            local.append(str(ROOT / argument))
            monkeypatch.syspath_prepend(str(ROOT / argument))
            run_block(block.source, namespace, where)
        else:
            assert not directive, f"{where}: unknown directive {directive!r}"
            run_block(block.source, namespace, where)
    if tests:
        (directory / "pytest.ini").write_text(_INNER_INI)
        outcomes = _Outcomes()
        files = [str(directory / (t.filename or "")) for t in tests]
        code = pytest.main(
            [
                "-q",
                "--rootdir",
                str(directory),
                "-c",
                str(directory / "pytest.ini"),
                *files,
            ],
            plugins=[outcomes],
        )
        assert not outcomes.failed, "\n".join(outcomes.failed)
        assert code == pytest.ExitCode.OK
        defined = sum(len(_TEST_FUNCTION.findall(t.source)) for t in tests)
        assert outcomes.passed >= defined


_TEST_FUNCTION = re.compile(r"^(?:async )?def test_", re.MULTILINE)


@pytest.mark.parametrize(
    "page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES]
)
def test_python_snippets_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_page(page, tmp_path, monkeypatch)


# -- the conventions themselves ---------------------------------------------------


def test_a_block_that_shows_an_error_must_raise_it() -> None:
    run_block('raise ValueError("bad thing, really")\n# ValueError: bad thing', {}, "x")
    with pytest.raises(pytest.fail.Exception):
        run_block("pass\n# ValueError: bad thing", {}, "x")
    with pytest.raises(AssertionError):
        run_block('raise TypeError("bad thing")\n# ValueError: bad thing', {}, "x")


def test_top_level_await_runs(capsys: pytest.CaptureFixture[str]) -> None:
    run_block("import anyio\nawait anyio.sleep(0)\nprint('ran')", {}, "x")
    assert capsys.readouterr().out == "ran\n"


def page_of(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / "page.md"
    page.write_text(text)
    return page


def test_files_and_test_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """
```python
# things.py
ANSWER = 42
```

```python
assert ANSWER == 42  # names of earlier blocks
```

```python
# test_things.py
from things import ANSWER

def test_answer():
    assert ANSWER == 42
```
"""
    run_page(page_of(tmp_path / "a", text), tmp_path / "a", monkeypatch)
    failing = text.replace("assert ANSWER == 42\n", "assert ANSWER == 41\n")
    with pytest.raises(AssertionError, match="test_answer"):
        run_page(page_of(tmp_path / "b", failing), tmp_path / "b", monkeypatch)
    assert "things" not in sys.modules  # the page's modules are forgotten


def test_a_skip_needs_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "<!-- docs-test: skip: needs the internet -->\n```python\n1 / 0\n```\n"
    run_page(page_of(tmp_path, text), tmp_path, monkeypatch)
    bare = text.replace(": needs the internet", "")
    with pytest.raises(AssertionError, match="skip needs a reason"):
        run_page(page_of(tmp_path, bare), tmp_path, monkeypatch)


def test_inside_runs_the_block_in_an_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """
```python
from pyobjects import DurableObject

class Box(DurableObject):
    pass
```

<!-- docs-test: inside Box -->
```python
assert type(self).__name__ == "Box" and ctx.id.name == "docs"
ctx.storage.put("k", 1)
```

<!-- docs-test: inside Box -->
```python
assert await ctx.storage.get("k") == 1  # storage persists
```
"""
    run_page(page_of(tmp_path, text), tmp_path, monkeypatch)


def test_types_a_page_registers_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """
```python
import dataclasses

import pyobjects


@pyobjects.register_type(name="docs.Point")
@dataclasses.dataclass
class Point:
    x: int
```
"""
    run_page(page_of(tmp_path, text), tmp_path, monkeypatch)
    assert "docs.Point" not in _registry.BY_NAME
