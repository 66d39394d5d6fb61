"""The ``pyobjects`` command line: ``serve`` (a real subprocess) and ``inspect``."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from pyobjects import DurableObject, Runtime
from pyobjects._cli import main
from pyobjects._cli_commands import cli
from pyobjects._inspect import list_namespaces
from pyobjects.storage import MemoryBackend, SQLiteBackend, StorageBackend, WriteBatch

from .cli_app import Counter
from .helpers import serve_subprocess
from .postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    import subprocess

ROOT = Path(__file__).parent.parent
HEX = "0123456789abcdef" * 4


def _populate(directory: Path) -> dict[str, str]:
    """Store a named object with an alarm, an unnamed one and junk; return ids."""

    async def run() -> dict[str, str]:
        async with Runtime(
            bindings={"COUNTER": Counter}, storage=SQLiteBackend(directory)
        ) as rt:
            named = rt.env.COUNTER.get_by_name("global")
            await named.fetch("https://x/?alarm")
            unnamed = rt.env.COUNTER.get(rt.env.COUNTER.new_unique_id())
            await unnamed.fetch("https://x/")
            await unnamed.fetch("https://x/")
            return {"named": str(named.id), "unnamed": str(unnamed.id)}

    ids = anyio.run(run)
    junk = SQLiteBackend(directory)
    store = junk.open("OTHER", HEX)

    async def write_junk() -> None:
        await store.commit(WriteBatch(writes={"bad": b"\xc1", "ok": b"\x01"}))
        await junk.aclose()

    anyio.run(write_junk)
    return ids


def test_inspect_lists_namespaces_objects_names_and_alarms(tmp_path: Path) -> None:
    ids = _populate(tmp_path / "data")
    result = CliRunner().invoke(cli, ["inspect", "--storage", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "COUNTER: 2 objects" in out
    assert "OTHER: 1 object\n" in out
    named_line = next(line for line in out.splitlines() if ids["named"] in line)
    assert "'global'" in named_line
    assert named_line.split()[2:4] == ["1", "6"]  # 1 key, "value" + 1 byte
    assert named_line.rstrip().endswith("Z")  # the pending alarm, in UTC
    unnamed_line = next(line for line in out.splitlines() if ids["unnamed"] in line)
    assert unnamed_line.split()[1:3] == ["-", "1"]


def test_inspect_json_and_one_namespace(tmp_path: Path) -> None:
    ids = _populate(tmp_path / "data")
    result = CliRunner().invoke(
        cli, ["inspect", "--storage", str(tmp_path / "data"), "--json", "COUNTER"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_id = {row["id"]: row for row in rows}
    assert by_id[ids["named"]]["name"] == "global"
    assert isinstance(by_id[ids["named"]]["alarm"], int)
    assert by_id[ids["unnamed"]] == {
        "namespace": "COUNTER",
        "id": ids["unnamed"],
        "name": None,
        "keys": 1,
        "size": 6,
        "alarm": None,
    }


def test_inspect_dumps_one_object_by_name_or_id(tmp_path: Path) -> None:
    ids = _populate(tmp_path / "data")
    storage = str(tmp_path / "data")
    by_name = CliRunner().invoke(
        cli, ["inspect", "--storage", storage, "COUNTER", "global"]
    )
    assert by_name.exit_code == 0, by_name.output
    assert f"COUNTER {ids['named']} (name 'global')" in by_name.output
    assert "  'value': 1" in by_name.output
    by_id = CliRunner().invoke(
        cli, ["inspect", "--storage", storage, "--json", "COUNTER", ids["unnamed"]]
    )
    document = json.loads(by_id.output)
    assert document["data"] == [{"key": "value", "value": 2}]  # real JSON
    assert document["tables"] == []
    junk = CliRunner().invoke(cli, ["inspect", "--storage", storage, "OTHER", HEX])
    assert "'bad': <undecodable: 1 bytes" in junk.output
    assert "'ok': 1" in junk.output


class Shelf(DurableObject):
    """An object with SQL tables and KV values JSON has no type for."""

    async def fill(self) -> None:
        sql = self.ctx.storage.sql
        sql.exec("CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT)")
        sql.exec("CREATE TABLE empty (x)")
        for title in ("Dune", "Emma", "Ulysses"):
            sql.exec("INSERT INTO books (title) VALUES (?)", title)
        self.ctx.storage.put("raw", b"\x00\xff")
        self.ctx.storage.put("nested", {"a": [1, (2, 3)], "when": None})


def _shelves(directory: Path, count: int) -> list[str]:
    async def run() -> list[str]:
        async with Runtime(
            bindings={"SHELF": Shelf}, storage=SQLiteBackend(directory)
        ) as rt:
            ids = []
            for i in range(count):
                stub = rt.env.SHELF.get_by_name(f"shelf{i}")
                await stub.fill()
                ids.append(str(stub.id))
            return ids

    return anyio.run(run)


def test_inspect_shows_sql_tables_and_real_json(tmp_path: Path) -> None:
    storage = str(tmp_path / "data")
    (shelf,) = _shelves(tmp_path / "data", 1)
    text = CliRunner().invoke(cli, ["inspect", "--storage", storage, "SHELF", "shelf0"])
    assert text.exit_code == 0, text.output
    assert "SQL tables: 2" in text.output
    assert "  books: 3 rows" in text.output
    assert "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT)" in text.output
    assert "  empty: 0 rows" in text.output
    assert "_cf_" not in text.output  # the reserved tables are not the user's
    as_json = CliRunner().invoke(
        cli, ["inspect", "--storage", storage, "--json", "SHELF", shelf[:8]]
    )
    document = json.loads(as_json.output)
    assert document["id"] == shelf  # found by an id prefix
    data = {entry["key"]: entry["value"] for entry in document["data"]}
    assert data == {
        "nested": {"a": [1, [2, 3]], "when": None},
        "raw": {"$bytes": "AP8="},
    }
    assert [t["name"] for t in document["tables"]] == ["books", "empty"]
    assert document["tables"][0]["rows"] == 3


def test_inspect_runs_read_only_sql(tmp_path: Path) -> None:
    storage = str(tmp_path / "data")
    _shelves(tmp_path / "data", 1)
    base = ["inspect", "--storage", storage]
    rows = CliRunner().invoke(
        cli, [*base, "SHELF", "shelf0", "--sql", "SELECT title FROM books ORDER BY 1"]
    )
    assert rows.exit_code == 0, rows.output
    assert rows.output.split() == ["title", "'Dune'", "'Emma'", "'Ulysses'"]
    as_json = CliRunner().invoke(
        cli,
        [
            *base,
            "--json",
            "SHELF",
            "shelf0",
            "--sql",
            "SELECT count(*) AS n FROM books",
        ],
    )
    assert json.loads(as_json.output) == [{"n": 3}]
    for write in ("DELETE FROM books", "DROP TABLE books", "PRAGMA user_version = 3"):
        refused = CliRunner().invoke(cli, [*base, "SHELF", "shelf0", "--sql", write])
        assert refused.exit_code == 1
        assert "cannot run that query" in refused.output
    after = CliRunner().invoke(
        cli, [*base, "SHELF", "shelf0", "--sql", "SELECT count(*) FROM books"]
    )
    assert after.output.split()[-1] == "3"  # nothing was written
    usage = CliRunner().invoke(cli, [*base, "--sql", "SELECT 1"])
    assert usage.exit_code == 2
    assert "--sql needs NAMESPACE and OBJECT" in usage.output


def test_inspect_sql_timeout_interrupts_an_endless_query(tmp_path: Path) -> None:
    storage = str(tmp_path / "data")
    _shelves(tmp_path / "data", 1)
    base = ["inspect", "--storage", storage, "SHELF", "shelf0", "--sql"]
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
        " SELECT count(*) FROM n"
    )
    started = time.monotonic()
    stopped = CliRunner().invoke(cli, [*base, endless, "--timeout", "0.2"])
    assert stopped.exit_code == 1, stopped.output
    assert "cannot run that query: interrupted" in stopped.output
    assert time.monotonic() - started < 30
    quick = CliRunner().invoke(
        cli, [*base, "SELECT count(*) FROM books", "--timeout", "5"]
    )
    assert quick.exit_code == 0, quick.output
    assert quick.output.split()[-1] == "3"
    for bad in ("0", "-1", "soon"):
        refused = CliRunner().invoke(cli, [*base, "SELECT 1", "--timeout", bad])
        assert refused.exit_code == 2, refused.output
    alone = CliRunner().invoke(
        cli, ["inspect", "--storage", storage, "SHELF", "shelf0", "--timeout", "1"]
    )
    assert alone.exit_code == 2
    assert "--timeout needs --sql" in alone.output


def test_inspect_refuses_an_ambiguous_id_prefix(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    backend = SQLiteBackend(directory)
    twins = ["abcd" + "0" * 60, "abcd" + "1" * 60]

    async def write() -> None:
        for object_id in twins:
            await backend.open("NS", object_id).commit(
                WriteBatch(writes={"k": b"\x01"})
            )
        await backend.aclose()

    anyio.run(write)
    base = ["inspect", "--storage", str(directory), "NS"]
    ambiguous = CliRunner().invoke(cli, [*base, "abcd"])
    assert ambiguous.exit_code == 1
    assert "'abcd' is the start of 2 object ids in 'NS'" in ambiguous.output
    unique = CliRunner().invoke(cli, [*base, "abcd1"])
    assert unique.exit_code == 0, unique.output
    assert twins[1] in unique.output
    too_short = CliRunner().invoke(cli, [*base, "abc"])  # 4 digits at least
    assert too_short.exit_code == 1
    assert "no stored object 'abc'" in too_short.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["COUNTER", "nobody"], "no stored object 'nobody'"),
        (["bad/namespace"], "invalid namespace name"),
    ],
)
def test_inspect_errors(tmp_path: Path, args: list[str], message: str) -> None:
    _populate(tmp_path / "data")
    result = CliRunner().invoke(
        cli, ["inspect", "--storage", str(tmp_path / "data"), *args]
    )
    assert result.exit_code == 1
    assert message in result.output


def test_inspect_empty_and_missing_storage(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(cli, ["inspect", "--storage", str(tmp_path / "empty")])
    assert (empty.exit_code, empty.output) == (0, "no stored objects\n")
    missing = CliRunner().invoke(cli, ["inspect", "--storage", str(tmp_path / "nope")])
    assert missing.exit_code == 1
    assert "no pyobjects storage at" in missing.output


async def test_backends_list_their_namespaces(backend: StorageBackend) -> None:
    assert await backend.list_namespaces() == []  # type: ignore[attr-defined]
    for namespace in ("B", "A"):
        await backend.open(namespace, HEX).commit(WriteBatch(writes={"k": b"v"}))
    assert await backend.list_namespaces() == ["A", "B"]  # type: ignore[attr-defined]
    await backend.aclose()


async def test_sqlite_list_namespaces_skips_what_is_not_a_namespace(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path)
    (tmp_path / "not a namespace").mkdir()
    (tmp_path / "no-objects").mkdir()
    (tmp_path / "stray-file").write_text("")
    await backend.open("REAL", HEX).commit(WriteBatch(alarm_changed=True, alarm=5))
    assert await backend.list_namespaces() == ["REAL"]
    await backend.aclose()


def test_inspect_needs_a_backend_that_lists_namespaces() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="cannot list its namespaces"):
        anyio.run(list_namespaces, Opaque())  # type: ignore[arg-type]
    assert anyio.run(list_namespaces, MemoryBackend()) == []


# -- serve -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nocolon"], "expected MODULE:WORKER"),
        (["tests.no_such_module:worker"], "cannot import module"),
        (["tests.cli_app:missing"], "has no attribute 'missing'"),
        (["tests.cli_app:not_a_worker"], "is a int, not a pyobjects.Worker"),
        (["tests.cli_app:app"], "is a pyobjects.asgi.App"),
        (["tests.cli_app:worker", "--memory", "--storage", "x"], "at most one of"),
        (["tests.cli_app:worker", "--memory", "--postgres", "x"], "at most one of"),
    ],
)
def test_serve_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--app-dir", str(ROOT), *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # A missing module whose name is a prefix of the served one's.
        (
            "from js import Response\n",
            "failed while importing: No module named 'js' ('js' is Pyodide's",
        ),
        (
            "from workers import Response\n",
            "No module named 'workers' ('workers' is Cloudflare's Python Workers",
        ),
        ("import pyodide.ffi\n", "No module named 'pyodide' ('pyodide' exists"),
        ("import no_such_dependency\n", "No module named 'no_such_dependency'"),
        ("raise RuntimeError('bad config')\n", "RuntimeError: bad config"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_serve_shows_why_a_module_failed_to_import(
    tmp_path: Path, source: str, message: str
) -> None:
    # A fresh module name per case: sys.modules remembers failed imports' parents.
    name = f"js_app_{zlib.crc32(source.encode())}"
    (tmp_path / f"{name}.py").write_text(source)
    result = CliRunner().invoke(
        cli, ["serve", "--app-dir", str(tmp_path), f"{name}:worker"]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert f"module {name!r} failed while importing" in result.output
    assert "cannot import module" not in result.output
    # The module's own frame is shown, importlib's are not.
    assert f"{name}.py" in result.output
    assert "<frozen importlib" not in result.output
    assert "import_module" not in result.output


def test_serve_names_a_missing_parent_package(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["serve", "--app-dir", str(tmp_path), "no_such_pkg.app:worker"]
    )
    assert result.exit_code == 2
    assert "cannot import module 'no_such_pkg.app'" in result.output
    assert "there is no module 'no_such_pkg'" in result.output


def test_serve_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(
            cli,
            ["serve", "--app-dir", str(ROOT), "tests.cli_app:worker", "--port", port],
        )
    assert result.exit_code == 1
    assert "cannot listen on 127.0.0.1" in result.output


def _url_of(process: subprocess.Popen[str], *, storage: str = "") -> str:
    assert process.stdout is not None
    line = process.stdout.readline()  # the first line names the URL
    assert "pyobjects: serving tests.cli_app:worker at http://127.0.0.1:" in line, line
    assert f"(storage: {storage}" in line
    return line.split(" at ")[1].split()[0]


def _stop(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, str]:
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_flushes_writes_on_ctrl_c(tmp_path: Path, sig: signal.Signals) -> None:
    process = serve_subprocess(
        "--port", "0", cwd=tmp_path
    )  # default storage: ./.pyobjects
    try:
        url = _url_of(process, storage="SQLite in .pyobjects")
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/global").text == "1"
            assert client.get("/global?alarm").text == "2"
    finally:
        code, out, err = _stop(process, sig)
    assert code == 0, err
    assert "pending writes flushed" in out
    storage = tmp_path / ".pyobjects"
    result = CliRunner().invoke(
        cli, ["inspect", "--storage", str(storage), "COUNTER", "global"]
    )
    assert "'value': 2" in result.output
    assert "alarm: 20" in result.output  # an ISO date, this century


def test_serve_in_memory(tmp_path: Path) -> None:
    process = serve_subprocess("--memory", "--port", "0", "--debug", cwd=tmp_path)
    try:
        url = _url_of(process, storage="in memory")
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/m").text == "1"
            assert int(client.get("/gc-frozen").text) > 10_000
    finally:
        code, _, _ = _stop(process, signal.SIGINT)
    assert code == 0
    assert not (tmp_path / ".pyobjects").exists()


def test_main_explains_a_missing_click(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "pyobjects._cli_commands")
    monkeypatch.setitem(sys.modules, "click", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 2
    assert "pip install 'pyobjects[server]'" in capsys.readouterr().err


def test_main_runs_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "serve" in out
    assert "inspect" in out


def test_serve_and_inspect_on_postgres(tmp_path: Path) -> None:
    dsn = require_postgres()
    schema = new_schema()
    try:
        process = serve_subprocess(
            "--postgres", dsn, "--schema", schema, "--port", "0", cwd=tmp_path
        )
        try:
            url = _url_of(process, storage=f"PostgreSQL, schema {schema}")
            with httpx.Client(base_url=url, timeout=10) as client:
                assert client.get("/global").text == "1"
                assert client.get("/global?alarm").text == "2"
            # inspect reads while the server holds the object (no lease taken).
            base = ["inspect", "--postgres", dsn, "--schema", schema]
            live = CliRunner().invoke(cli, [*base, "COUNTER", "global"])
            assert live.exit_code == 0, live.output
            assert "'value': 2" in live.output
        finally:
            code, out, err = _stop(process, signal.SIGTERM)
        assert code == 0, err
        assert "pending writes flushed" in out
        assert not (tmp_path / ".pyobjects").exists()  # nothing local
        listing = CliRunner().invoke(cli, [*base, "--json"])
        assert listing.exit_code == 0, listing.output
        (entry,) = json.loads(listing.output)
        assert entry["name"] == "global"
        assert entry["keys"] == 1
        assert entry["alarm"] is not None
        rows = CliRunner().invoke(
            cli, [*base, "--json", "COUNTER", "global", "--sql", "SELECT 6 * 7 AS n"]
        )
        assert rows.exit_code == 0, rows.output
        assert json.loads(rows.output) == [{"n": 42}]
        bad = CliRunner().invoke(cli, ["inspect", "--postgres", dsn, "--schema", "1x"])
        assert bad.exit_code == 2
        assert "invalid schema name" in bad.output
    finally:
        drop_schema(dsn, schema)


def test_served_connections_have_nagle_off() -> None:
    # asyncio sets TCP_NODELAY only on connections of a socket created as
    # IPPROTO_TCP; with Nagle on, a response written in two parts on a
    # kept-alive connection waits for the client's delayed ACK (about 40 ms).
    import asyncio  # noqa: TID251 - asyncio's own behaviour is the point

    from pyobjects._cli_commands import _bind

    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen: list[int] = []

    async def main() -> None:
        def accepted(reader: Any, writer: Any) -> None:
            conn = writer.get_extra_info("socket")
            seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen == [1]
