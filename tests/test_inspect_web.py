"""The web inspector's JSON endpoints and ``pyobjects inspect --web``."""

from __future__ import annotations

import base64
import contextlib
import math
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from pyobjects import Runtime
from pyobjects._cli_commands import cli
from pyobjects._inspect import jsonable
from pyobjects._inspect_web import inspector_app, new_token
from pyobjects.storage import MemoryBackend, SQLiteBackend, WriteBatch
from pyobjects.storage.sqlite import read_only_backend

from .inspect_data import (
    ALARM_MS,
    BOOKS,
    XSS_KEY,
    XSS_VALUE,
    Counter,
    populate,
    start_inspector,
    stop_inspector,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("inspect") / "data"
    return directory, populate(directory)


@contextlib.asynccontextmanager
async def client(
    directory: Path, *, token: str | None = TOKEN, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    backend = read_only_backend(directory)
    app = inspector_app(backend, token=TOKEN, storage_label="the-data", **options)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://127.0.0.1",
            headers=headers,
        ) as http:
            yield http
    finally:
        await backend.aclose()


async def get(http: httpx.AsyncClient, url: str, status: int = 200) -> Any:
    response = await http.get(url)
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


async def sql(http: httpx.AsyncClient, statement: str, status: int = 200) -> Any:
    response = await http.post(
        "/api/objects/LIBRARY/central/sql", json={"sql": statement}
    )
    assert response.status_code == status, response.text
    return response.json()


PROTECTED = [
    "/",
    "/api/namespaces",
    "/api/namespaces/COUNTER",
    "/api/objects/LIBRARY/central",
    "/api/objects/LIBRARY/central/kv",
    "/api/objects/LIBRARY/central/tables/books",
    "/no-such-page",
]


async def test_requests_without_the_token_are_refused(
    data: tuple[Path, dict[str, str]],
) -> None:
    directory, _ = data
    async with client(directory, token=None) as http:
        for path in PROTECTED:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Bearer {TOKEN[:-1]}"},  # a prefix is not it
                {"Authorization": f"Basic {TOKEN}"},
            ):
                refused = await http.get(path, headers=headers)
                assert refused.status_code == 403, (path, headers)
                assert "holds the token" in refused.text
            for query in ("token=", "token=wrong", f"tokens={TOKEN}"):
                refused = await http.get(f"{path}?{query}")
                assert refused.status_code == 403, (path, query)
            allowed = await http.get(f"{path}?token={TOKEN}")
            assert allowed.status_code == (404 if path == "/no-such-page" else 200)
            bearer = await http.get(path, headers={"Authorization": f"bearer {TOKEN}"})
            assert bearer.status_code == allowed.status_code
        refused = await http.post(
            "/api/objects/LIBRARY/central/sql", json={"sql": "SELECT 1"}
        )
        assert refused.status_code == 403


def test_new_tokens_are_long_and_random() -> None:
    tokens = {new_token() for _ in range(20)}
    assert len(tokens) == 20
    assert all(len(t) >= 32 and re.fullmatch(r"[\w-]+", t) for t in tokens)


async def test_the_page_runs_only_its_own_script(
    data: tuple[Path, dict[str, str]],
) -> None:
    directory, _ = data
    async with client(directory) as http:
        first = await http.get("/")
        second = await http.get("/")
    assert first.headers["content-type"].startswith("text/html")
    assert first.headers["referrer-policy"] == "no-referrer"
    assert first.headers["x-content-type-options"] == "nosniff"
    policy = first.headers["content-security-policy"]
    (nonce,) = set(re.findall(r"'nonce-([\w-]+)'", policy))
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert first.text.count(f'nonce="{nonce}"') == 2  # the style and the script
    assert "{{nonce}}" not in first.text
    assert "<title>pyobjects inspect</title>" in first.text
    assert nonce not in second.text  # a new nonce for every page


async def test_namespaces_and_pages_of_objects(
    data: tuple[Path, dict[str, str]],
) -> None:
    directory, ids = data
    async with client(directory) as http:
        listed = await get(http, "/api/namespaces")
        assert listed == {
            "storage": "the-data",
            "namespaces": [
                {"name": "COUNTER", "objects": 6},
                {"name": "LIBRARY", "objects": 1},
                {"name": "NOTES", "objects": 1},
            ],
        }
        seen = []
        for offset in (0, 4, 8):
            page = await get(http, f"/api/namespaces/COUNTER?offset={offset}&limit=4")
            assert (page["total"], page["offset"], page["limit"]) == (6, offset, 4)
            seen += page["objects"]
        assert [len(seen[:4]), len(seen[4:])] == [4, 2]
        counters = {k: v for k, v in ids.items() if k not in ("library", "notes")}
        assert [o["id"] for o in seen] == sorted(counters.values())
        by_id = {o["id"]: o for o in seen}
        assert by_id[ids["home"]] == {
            "namespace": "COUNTER",
            "id": ids["home"],
            "name": "home",
            "keys": 1,
            "size": len("value") + 1,
            "alarm": None,
        }
        assert by_id[ids["unnamed"]]["name"] is None
        default = await get(http, "/api/namespaces/COUNTER")
        assert (default["offset"], default["limit"]) == (0, 50)
        assert len(default["objects"]) == 6
        empty = await get(http, "/api/namespaces/NOBODY")
        assert (empty["total"], empty["objects"]) == (0, [])
        for query in ("limit=501", "limit=x", "offset=-1", "offset=1.5"):
            error = await get(http, f"/api/namespaces/COUNTER?{query}", 400)
            assert "must be" in error["error"]
        bad = await get(http, "/api/namespaces/bad%20name!", 400)
        assert "namespace" in bad["error"]


async def test_one_object_its_alarm_and_tables(
    data: tuple[Path, dict[str, str]],
) -> None:
    directory, ids = data
    async with client(directory) as http:
        library = await get(http, "/api/objects/LIBRARY/central")
        assert library["id"] == ids["library"]
        assert (library["name"], library["keys"]) == ("central", 3)
        assert library["alarm"] == ALARM_MS
        assert library["alarm_utc"] == "2026-12-01T10:00:00.000Z"
        assert [(t["name"], t["rows"]) for t in library["tables"]] == [
            ("books", BOOKS),
            ("loans", 2),
        ]
        assert library["tables"][1]["sql"] == (
            "CREATE TABLE loans (book_id INTEGER, member TEXT, due TEXT)"
        )
        by_prefix = await get(http, f"/api/objects/LIBRARY/{ids['library'][:6]}")
        assert by_prefix == library
        counter = await get(http, f"/api/objects/COUNTER/{ids['unnamed']}")
        assert (counter["name"], counter["alarm"], counter["alarm_utc"]) == (
            None,
            None,
            None,
        )
        assert counter["tables"] == []
        missing = await get(http, "/api/objects/LIBRARY/nowhere", 404)
        assert missing == {"error": "no stored object 'nowhere' in namespace 'LIBRARY'"}


async def test_an_ambiguous_id_prefix_is_a_bad_request(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)
    for object_id in ("abcd" + "0" * 60, "abcd" + "1" * 60):
        await backend.open("NS", object_id).commit(WriteBatch(writes={"k": b"\x01"}))
    await backend.aclose()
    async with client(tmp_path) as http:
        error = await get(http, "/api/objects/NS/abcd", 400)
        assert "is the start of 2 object ids" in error["error"]
        found = await get(http, "/api/objects/NS/abcd1")
        assert found["id"] == "abcd" + "1" * 60


async def test_pages_of_key_value_entries(data: tuple[Path, dict[str, str]]) -> None:
    directory, _ = data
    async with client(directory) as http:
        first = await get(http, "/api/objects/NOTES/notes/kv")
        assert (first["total"], first["offset"], first["limit"]) == (61, 0, 50)
        assert first["entries"][0] == {"key": XSS_KEY, "value": XSS_VALUE}
        assert first["entries"][1] == {"key": "note:000", "value": "note number 0"}
        rest = await get(http, "/api/objects/NOTES/notes/kv?offset=50&limit=50")
        assert [e["key"] for e in rest["entries"]] == [
            f"note:{i:03d}" for i in range(49, 60)
        ]
        past = await get(http, "/api/objects/NOTES/notes/kv?offset=61")
        assert past["entries"] == []
        library = await get(http, "/api/objects/LIBRARY/central/kv")
        assert library["entries"] == [
            {"key": "logo", "value": {"$bytes": base64.b64encode(b"\x89PNG").decode()}},
            {"key": "members", "value": 3},
            {"key": "opening_hours", "value": {"mon-fri": "9-18", "sat": "10-14"}},
        ]
        await get(http, "/api/objects/NOTES/notes/kv?limit=1000", 400)


async def test_pages_of_table_rows(data: tuple[Path, dict[str, str]]) -> None:
    directory, _ = data
    base = "/api/objects/LIBRARY/central/tables"
    async with client(directory) as http:
        first = await get(http, f"{base}/books?limit=10")
        assert first["name"] == "books"
        assert first["sql"].startswith("CREATE TABLE books (id INTEGER PRIMARY KEY")
        assert first["columns"] == ["id", "title", "author", "year"]
        assert (first["total"], first["offset"], first["limit"]) == (BOOKS, 0, 10)
        assert first["rows"][0] == [1, "Dune (copy 1)", "Frank Herbert", 1965]
        assert first["rows"][7][3] is None  # SQL NULL
        ids = []
        for offset in range(0, BOOKS + 50, 50):
            page = await get(http, f"{base}/books?offset={offset}")
            ids += [row[0] for row in page["rows"]]
        assert ids == list(range(1, BOOKS + 1))  # every row once, in order
        loans = await get(http, f"{base}/loans")
        assert loans["rows"] == [[1, "ada", "2026-12-15"], [3, "grace", "2026-12-20"]]
        for hidden in ("nothing", "_cf_KV", "sqlite_master"):
            error = await get(http, f"{base}/{hidden}", 404)
            assert "has no table" in error["error"]


async def test_read_only_sql(data: tuple[Path, dict[str, str]]) -> None:
    directory, _ = data
    async with client(directory) as http:
        answer = await sql(http, "SELECT author, count(*) AS n FROM books GROUP BY 1")
        assert answer["columns"] == ["author", "n"]
        assert ["Jane Austen", 24] in answer["rows"]
        assert answer["truncated"] is False
        odd = await sql(http, "SELECT x'00ff', 1e999, -1e999, NULL")
        assert odd["rows"] == [
            [{"$bytes": "AP8="}, {"$float": "inf"}, {"$float": "-inf"}, None]
        ]
        for write in (
            "DELETE FROM books",
            "UPDATE books SET year = 0",
            "DROP TABLE loans",
            "CREATE TABLE x (y)",
            "PRAGMA user_version = 3",
            "ATTACH 'other.db' AS other",
        ):
            refused = await sql(http, write, 400)
            assert refused["error"].startswith("cannot run that query"), write
        assert (await sql(http, "SELECT count(*) FROM books"))["rows"] == [[BOOKS]]
        for body in (b"not json", b"[]", b'{"sql": 3}', b'{"sql": "  "}'):
            response = await http.post(
                "/api/objects/LIBRARY/central/sql",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 400
            assert response.json()["error"] == 'the body must be JSON: {"sql": "..."}'
        assert (await http.get("/api/objects/LIBRARY/central/sql")).status_code == 405


async def test_sql_answers_are_bounded_in_rows_and_time(
    data: tuple[Path, dict[str, str]],
) -> None:
    directory, _ = data
    async with client(directory, max_query_rows=10) as http:
        cut = await sql(http, "SELECT id FROM books")
        assert cut["rows"] == [[i] for i in range(1, 11)]
        assert cut["truncated"] is True
        whole = await sql(http, "SELECT id FROM books LIMIT 10")
        assert whole["truncated"] is False
    # A read that never ends: interrupted once its time is up (here at once).
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
    async with client(directory, query_timeout=0) as http:
        stopped = await sql(http, endless + "SELECT count(*) FROM n", 400)
        assert stopped["error"] == "cannot run that query: interrupted"
    async with client(directory) as http:
        # The handler is gone after a query: the next one runs in full.
        done = await sql(http, endless + "SELECT max(i) FROM (SELECT i FROM n LIMIT 5)")
        assert done["rows"] == [[5]]


async def test_reads_what_a_running_runtime_writes(tmp_path: Path) -> None:
    owner = SQLiteBackend(tmp_path)
    async with Runtime(bindings={"COUNTER": Counter}, storage=owner) as rt:
        counter = rt.env.COUNTER.get_by_name("live")
        await counter.add(5)
        async with client(tmp_path) as http:
            url = "/api/objects/COUNTER/live/kv"
            assert (await get(http, url))["entries"] == [{"key": "value", "value": 5}]
            await counter.add(6)
            assert (await get(http, url))["entries"] == [{"key": "value", "value": 6}]
        await counter.add(7)  # the owner is not disturbed
    async with client(tmp_path) as http:
        assert (await get(http, "/api/objects/COUNTER/live/kv"))["entries"][0] == {
            "key": "value",
            "value": 7,
        }


def test_jsonable_tags_floats_json_has_not() -> None:
    assert jsonable([math.inf, -math.inf, 1.5]) == [
        {"$float": "inf"},
        {"$float": "-inf"},
        1.5,
    ]
    assert jsonable(math.nan) == {"$float": "nan"}


# -- the command ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--web", "--json"], "--web takes no NAMESPACE, OBJECT, --json or --sql"),
        (["--web", "NS"], "--web takes no NAMESPACE, OBJECT, --json or --sql"),
        (["--web", "--sql", "SELECT 1"], "--web takes no NAMESPACE"),
        (["--port", "8080"], "--port needs --web"),
    ],
)
def test_inspect_web_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["inspect", "--storage", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_inspect_web_needs_a_storage_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["inspect", "--web", "--storage", str(tmp_path / "nope")]
    )
    assert result.exit_code == 1
    assert "no pyobjects storage at" in result.output


def test_inspect_web_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["inspect", "--web", "--storage", str(tmp_path), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_inspect_web_explains_a_missing_starlette(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name == "pyobjects._inspect_web" or name.split(".")[0] == "starlette":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    result = CliRunner().invoke(cli, ["inspect", "--web", "--storage", str(tmp_path)])
    assert result.exit_code == 1
    assert "inspect --web needs starlette: pip install 'pyobjects[server]'" in (
        result.output
    )


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on *port* (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_inspect_web_serves_on_loopback_with_a_token(
    data: tuple[Path, dict[str, str]],
) -> None:
    directory, _ = data
    process, url = start_inspector(directory)
    try:
        base, _, token = url.partition("/?token=")
        assert len(token) >= 32
        if Path("/proc/net/tcp").exists():
            port = int(base.rsplit(":", 1)[1])
            assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        assert httpx.get(base + "/").status_code == 403
        assert httpx.get(url).status_code == 200
        listed = httpx.get(
            base + "/api/namespaces", headers={"Authorization": f"Bearer {token}"}
        ).json()
        assert listed["storage"] == directory.name  # as the command was given
    finally:
        err = stop_inspector(process)
    assert token not in err  # no access log holding the token
    # It only read: the directory still serves a runtime, which claims it.
    owner = SQLiteBackend(directory)
    owner.claim()
    anyio.run(owner.aclose)


async def test_a_backend_without_sql(tmp_path: Path) -> None:
    memory = MemoryBackend()
    async with Runtime(bindings={"COUNTER": Counter}, storage=memory) as rt:
        await rt.env.COUNTER.get_by_name("home").add(1)
        app = inspector_app(memory, token=TOKEN)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as http:
            home = await get(http, "/api/objects/COUNTER/home")
            assert (home["keys"], home["tables"]) == (1, [])
            await get(http, "/api/objects/COUNTER/home/tables/books", 404)
            response = await http.post(
                "/api/objects/COUNTER/home/sql", json={"sql": "SELECT 1"}
            )
            assert response.status_code == 400
            assert "has no SQL database" in response.json()["error"]


async def test_a_storage_error_is_a_server_error(tmp_path: Path) -> None:
    (tmp_path / "NS").mkdir()
    (tmp_path / "NS" / f"{'ab' * 32}.sqlite").write_bytes(b"not a database" * 100)
    async with client(tmp_path) as http:
        error = await get(http, "/api/namespaces/NS", 500)
        assert "cannot" in error["error"]
