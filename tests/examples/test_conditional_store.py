"""examples/conditional_store: writes conditional on ETags, stores in jurisdictions.

In process (asyncio and trio), then over real HTTP under uvicorn (a race of
conditional writes, a restart on SQLite), and through the README's command.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from examples.conditional_store import app as store_app

from pyobjects import DurableObjectStub, Runtime
from pyobjects.asgi import App
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import fail_next_commits
from tests.servers import ServerThread

from .support import Serve, in_process

ROOT = Path(__file__).parent.parent.parent
HEX64 = "[0-9a-f]{64}"


def make_app(**options: Any) -> App:
    return App(store_app.worker, **options)


async def new_store(client: httpx.AsyncClient, query: str = "") -> str:
    response = await client.post("/stores" + query)
    assert response.status_code == 201, response.text
    store = response.text.strip()
    assert re.fullmatch(HEX64, store), store
    assert response.headers["location"] == f"/{store}"
    return store


def stub_of(app: App, store: str) -> DurableObjectStub:
    namespace = app.runtime.env.STORES
    stub: DurableObjectStub = namespace.get(namespace.id_from_string(store))
    return stub


# -- in process -------------------------------------------------------------------


async def test_create_read_and_replace_with_if_match() -> None:
    async with in_process(make_app()) as client:
        store = await new_store(client)
        url = f"/{store}/greeting"
        assert (await client.get(url)).status_code == 404

        created = await client.put(
            url, content=b"hello", headers={"content-type": "text/plain"}
        )
        assert created.status_code == 201
        assert created.headers["location"] == url
        first = created.headers["etag"]
        assert first == store_app.etag_of(b"hello")

        got = await client.get(url)
        assert (got.status_code, got.content) == (200, b"hello")
        assert got.headers["etag"] == first
        assert got.headers["content-type"] == "text/plain"

        # Replacing needs If-Match: without it 428, and nothing changes.
        missing = await client.put(url, content=b"bye")
        assert missing.status_code == 428
        assert missing.headers["etag"] == first
        stale = await client.put(url, content=b"bye", headers={"if-match": '"abc"'})
        assert (stale.status_code, stale.headers["etag"]) == (412, first)
        assert (await client.get(url)).content == b"hello"

        replaced = await client.put(url, content=b"bye", headers={"if-match": first})
        assert replaced.status_code == 200
        second = replaced.headers["etag"]
        assert second != first
        assert (await client.get(url)).headers["etag"] == second
        assert (await client.get(url)).headers["content-type"] == (
            "application/octet-stream"
        )
        # The old ETag is stale now.
        again = await client.put(url, content=b"hello", headers={"if-match": first})
        assert again.status_code == 412
        # One of a list matches; a weak tag never does (strong comparison).
        listed = await client.put(
            url, content=b"third", headers={"if-match": f'"x", {second}'}
        )
        assert listed.status_code == 200
        third = listed.headers["etag"]
        weak = await client.put(url, content=b"4", headers={"if-match": f"W/{third}"})
        assert weak.status_code == 412
        # Writing the same bytes keeps the ETag: it is a hash of the value.
        same = await client.put(url, content=b"third", headers={"if-match": third})
        assert (same.status_code, same.headers["etag"]) == (200, third)


async def test_star_and_if_none_match() -> None:
    async with in_process(make_app()) as client:
        store = await new_store(client)
        url = f"/{store}/k"
        # If-Match, even *, needs the key to exist.
        star = await client.put(url, content=b"v", headers={"if-match": "*"})
        assert star.status_code == 412
        assert "etag" not in star.headers
        # If-None-Match: * creates only.
        only = await client.put(url, content=b"v1", headers={"if-none-match": "*"})
        assert only.status_code == 201
        etag = only.headers["etag"]
        exists = await client.put(url, content=b"v2", headers={"if-none-match": "*"})
        assert exists.status_code == 412
        # * replaces whatever is there.
        replaced = await client.put(url, content=b"v2", headers={"if-match": "*"})
        assert replaced.status_code == 200
        assert (await client.get(url)).content == b"v2"
        # GET with If-None-Match: 304 when unchanged (weak comparison).
        current = replaced.headers["etag"]
        for tag in (current, f"W/{current}", "*"):
            cached = await client.get(url, headers={"if-none-match": tag})
            assert (cached.status_code, cached.content) == (304, b"")
            assert cached.headers["etag"] == current
        fresh = await client.get(url, headers={"if-none-match": etag})
        assert (fresh.status_code, fresh.content) == (200, b"v2")


async def test_delete_is_conditional_too() -> None:
    async with in_process(make_app()) as client:
        store = await new_store(client)
        url = f"/{store}/k"
        assert (await client.delete(url)).status_code == 404
        assert (await client.delete(url, headers={"if-match": "*"})).status_code == 412
        etag = (await client.put(url, content=b"v")).headers["etag"]
        assert (await client.delete(url)).status_code == 428
        stale = await client.delete(url, headers={"if-match": '"x"'})
        assert (stale.status_code, stale.headers["etag"]) == (412, etag)
        deleted = await client.delete(url, headers={"if-match": etag})
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert (await client.get(url)).status_code == 404
        # Deleted, it can be created again without a condition.
        assert (await client.put(url, content=b"v")).status_code == 201


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("if-match", "abc"),  # not quoted
        ("if-match", '"a", *'),
        ("if-match", '"a" "b"'),
        ("if-none-match", ""),
        ("if-none-match", 'W/"a'),
    ],
)
async def test_malformed_conditions_are_400(header: str, value: str) -> None:
    async with in_process(make_app()) as client:
        store = await new_store(client)
        response = await client.put(
            f"/{store}/k", content=b"v", headers={header: value}
        )
        assert response.status_code == 400
        assert response.text == f"Bad Request: malformed {header} header\n"
        assert (await client.get(f"/{store}/k")).status_code == 404


async def test_the_store_lists_its_keys_and_methods_are_checked() -> None:
    async with in_process(make_app()) as client:
        store = await new_store(client)
        for key, body in (("a", b"1"), ("b/c d", b"2")):
            url = f"/{store}/{key.replace(' ', '%20')}"
            assert (await client.put(url, content=body)).status_code == 201
        created = await client.put(f"/{store}/x%2Fy", content=b"3")
        assert created.headers["location"] == f"/{store}/x/y"
        info = (await client.get(f"/{store}")).json()
        assert info == {
            "id": store,
            "jurisdiction": None,
            "keys": {
                "a": store_app.etag_of(b"1"),
                "b/c d": store_app.etag_of(b"2"),
                "x/y": store_app.etag_of(b"3"),
            },
        }
        assert (await client.get(f"/{store}/b/c%20d")).content == b"2"
        assert (await client.post(f"/{store}/a")).status_code == 405
        assert (await client.post(f"/{store}")).status_code == 405
        assert (await client.get("/stores")).headers["allow"] == "POST"
        assert (await client.get(f"/{store}/")).status_code == 404
        head = await client.head(f"/{store}/a")
        assert head.status_code == 200
        assert head.headers["etag"] == store_app.etag_of(b"1")


async def test_jurisdiction_is_kept_in_the_id() -> None:
    app = make_app()
    async with in_process(app) as client:
        eu = await new_store(client, "?jurisdiction=eu")
        plain = await new_store(client)
        assert eu != plain
        namespace = app.runtime.env.STORES
        assert namespace.id_from_string(eu).jurisdiction == "eu"
        assert namespace.id_from_string(plain).jurisdiction is None
        # The object sees it too, having been reached by id_from_string().
        assert (await client.get(f"/{eu}")).json()["jurisdiction"] == "eu"
        assert (await client.get(f"/{plain}")).json()["jurisdiction"] is None
        assert (await client.put(f"/{eu}/k", content=b"v")).status_code == 201
        assert (await client.get(f"/{eu}/k")).content == b"v"
        # Same key, different stores: independent.
        assert (await client.get(f"/{plain}/k")).status_code == 404

        for name in ("fedramp", "us"):
            store = await new_store(client, f"?jurisdiction={name}")
            assert (await client.get(f"/{store}")).json()["jurisdiction"] == name
        unknown = await client.post("/stores?jurisdiction=mars")
        assert unknown.status_code == 400
        assert "Unknown jurisdiction 'mars'" in unknown.text


async def test_malformed_store_ids_are_400() -> None:
    foreign_runtime = Runtime(bindings={"OTHER": store_app.Store})
    foreign = str(foreign_runtime.env.OTHER.new_unique_id())
    async with in_process(make_app()) as client:
        store = await new_store(client)
        for bad in ("nothex", store[:-1], store + "0", "g" * 64, "0" * 64, foreign):
            for method in ("GET", "PUT"):
                response = await client.request(method, f"/{bad}/k", content=b"")
                assert response.status_code == 400, (bad, method)
                assert response.text.startswith("Bad Request: ")
        # Either case of the hex digits names the same store.
        assert (await client.get(f"/{store.upper()}")).json()["id"] == store
        assert (await client.get("/")).status_code == 400


async def test_conditional_writes_are_atomic() -> None:
    async with in_process(make_app()) as client:
        store = await new_store(client)
        url = f"/{store}/k"
        etag = (await client.put(url, content=b"v0")).headers["etag"]
        statuses: dict[int, int] = {}

        async def write(n: int) -> None:
            response = await client.put(
                url, content=f"v{n}".encode(), headers={"if-match": etag}
            )
            statuses[n] = response.status_code

        async with anyio.create_task_group() as tg:
            for n in range(1, 11):
                tg.start_soon(write, n)
        winners = [n for n, status in statuses.items() if status == 200]
        assert len(winners) == 1
        assert sorted(statuses.values()) == [200] + [412] * 9
        assert (await client.get(url)).content == f"v{winners[0]}".encode()


async def test_a_failed_write_changes_nothing() -> None:
    app = make_app()
    async with in_process(app) as client:
        store = await new_store(client)
        url = f"/{store}/k"
        etag = (await client.put(url, content=b"small")).headers["etag"]

        # Too big for storage: put() raises in the transaction, which rolls back.
        big = await client.put(url, content=b"x" * 200_000, headers={"if-match": etag})
        assert big.status_code == 413
        assert "Values cannot be larger than 131072 bytes" in big.text
        long_key = f"/{store}/{'k' * 3000}"
        assert (await client.put(long_key, content=b"v")).status_code == 414

        # The commit fails: the caller gets an error, and no part is written.
        fail_next_commits(stub_of(app, store))
        failed = await client.put(url, content=b"new", headers={"if-match": etag})
        assert failed.status_code == 500
        got = await client.get(url)
        assert (got.content, got.headers["etag"]) == (b"small", etag)
        assert (await client.get(f"/{store}")).json()["keys"] == {"k": etag}


async def test_data_survives_a_restart_on_sqlite(tmp_path: Path) -> None:
    async with in_process(make_app(storage=SQLiteBackend(tmp_path))) as client:
        store = await new_store(client, "?jurisdiction=eu")
        etag = (await client.put(f"/{store}/k", content=b"kept")).headers["etag"]
    async with in_process(make_app(storage=SQLiteBackend(tmp_path))) as client:
        got = await client.get(f"/{store}/k")
        assert (got.content, got.headers["etag"]) == (b"kept", etag)
        assert (await client.get(f"/{store}")).json()["jurisdiction"] == "eu"
        assert (await client.put(f"/{store}/k", content=b"x")).status_code == 428


def test_etags_and_their_parsing() -> None:
    assert store_app.etag_of(b"") == store_app.etag_of(b"")
    assert store_app.etag_of(b"a") != store_app.etag_of(b"b")
    assert store_app.parse_etags("*") == []
    assert store_app.parse_etags(' "a" , W/"b",""') == [
        (False, '"a"'),
        (True, '"b"'),
        (False, '""'),
    ]
    assert store_app.parse_etags('"a",,"b"') is None
    assert not store_app.matches([(True, '"a"')], '"a"', weak=False)
    assert store_app.matches([(True, '"a"')], '"a"', weak=True)


# -- over real HTTP ---------------------------------------------------------------


async def test_conditional_store_over_http(serve: Serve) -> None:
    url = serve(make_app())
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        store = await new_store(client, "?jurisdiction=eu")
        assert (await client.get(f"/{store}")).json()["jurisdiction"] == "eu"
        key = f"/{store}/doc"
        created = await client.put(key, content=b"v0", headers={"if-none-match": "*"})
        assert created.status_code == 201
        etag = created.headers["etag"]
        assert (await client.put(key, content=b"v1")).status_code == 428

        # Ten clients race to replace the version they all read: one wins.
        statuses: list[int] = []

        async def write(n: int) -> None:
            response = await client.put(
                key, content=f"v{n}".encode(), headers={"if-match": etag}
            )
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            for n in range(1, 11):
                tg.start_soon(write, n)
        assert sorted(statuses) == [200] + [412] * 9
        got = await client.get(key)
        assert got.content in {f"v{n}".encode() for n in range(1, 11)}
        assert got.headers["etag"] == store_app.etag_of(got.content)

        assert (await client.get("/not-an-id/doc")).status_code == 400


def test_data_survives_a_server_restart_on_sqlite(serve: Serve, tmp_path: Path) -> None:
    first = ServerThread(make_app(storage=SQLiteBackend(tmp_path)))
    url = first.start()
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            store = client.post("/stores?jurisdiction=eu").text.strip()
            etag = client.put(f"/{store}/k", content=b"kept").headers["etag"]
    finally:
        first.stop()  # flushes and closes the storage
    url = serve(make_app(storage=SQLiteBackend(tmp_path)))
    with httpx.Client(base_url=url, timeout=5) as client:
        got = client.get(f"/{store}/k")
        assert (got.content, got.headers["etag"]) == (b"kept", etag)
        assert client.get(f"/{store}").json()["jurisdiction"] == "eu"


def test_the_readme_command_serves_it(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pyobjects", "serve"]
    command += ["examples.conditional_store.app:worker", "--port", "0", "--memory"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert " at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        with httpx.Client(base_url=url, timeout=10) as client:
            store = client.post("/stores").text.strip()
            assert client.put(f"/{store}/k", content=b"v").status_code == 201
            assert client.get(f"/{store}/k").content == b"v"
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
