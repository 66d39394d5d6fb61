"""examples/counter_service: counters behind a per-client token-bucket limiter.

In process (asyncio and trio) with a ManualClock for exact refill and expiry
times, then over real HTTP under uvicorn, and through the README's command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.counter_service import app as counter_app

from pyobjects import Runtime, Worker
from pyobjects.asgi import App
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import ManualClock, list_durable_object_ids

from .support import ClockedApp, Serve, in_process

ROOT = Path(__file__).parent.parent.parent
START = 1_767_225_600_000  # ManualClock's default start


def make_worker(burst: int = 3, per_second: float = 1.0, **more_vars: str) -> Worker:
    return Worker(
        counter_app.fetch,
        bindings=counter_app.worker.bindings,
        vars={
            "RATE_LIMIT_BURST": burst,
            "RATE_LIMIT_PER_SECOND": per_second,
            **more_vars,
        },
    )


def make_app(
    burst: int = 3, per_second: float = 1.0, clock: ManualClock | None = None
) -> App:
    return App(make_worker(burst, per_second), clock=clock or ManualClock())


def ip(address: str) -> dict[str, str]:
    return {"CF-Connecting-IP": address}


# -- in process -------------------------------------------------------------------


async def test_counters_count_per_name_and_names_are_independent() -> None:
    async with in_process(make_app(burst=100)) as client:
        assert (await client.get("/apples")).json() == {"name": "apples", "value": 0}
        for expected in (1, 2, 3):
            response = await client.post("/apples/increment")
            assert response.status_code == 200
            assert response.json() == {"name": "apples", "value": expected}
        assert (await client.post("/pears/decrement")).json()["value"] == -1
        assert (await client.post("/apples/decrement")).json()["value"] == 2
        assert (await client.get("/apples")).json()["value"] == 2
        assert (await client.get("/pears")).json()["value"] == -1
        # Percent-encoded names are decoded; each is its own object.
        assert (await client.post("/big%20apples/increment")).json() == {
            "name": "big apples",
            "value": 1,
        }
        head = await client.head("/apples")
        assert (head.status_code, head.content) == (200, b"")


async def test_unknown_routes_and_methods_cost_no_token() -> None:
    async with in_process(make_app(burst=1)) as client:
        for method, path, status in [
            ("GET", "/", 404),
            ("GET", "/a/b/c", 404),
            ("POST", "/a/reset", 404),
            ("POST", "/a/", 404),
            ("POST", "/apples", 405),
            ("GET", "/apples/increment", 405),
        ]:
            response = await client.request(method, path)
            assert response.status_code == status, (method, path)
        assert (await client.request("POST", "/apples")).headers["allow"] == (
            "GET, HEAD"
        )
        assert (await client.get("/apples/increment")).headers["allow"] == "POST"
        # The one token of the bucket is still there.
        assert (await client.post("/apples/increment")).status_code == 200
        assert (await client.post("/apples/increment")).status_code == 429


async def test_over_the_limit_gets_429_with_retry_after() -> None:
    async with in_process(make_app(burst=3, per_second=1)) as client:
        assert [(await client.post("/c/increment")).status_code for _ in range(3)] == [
            200,
            200,
            200,
        ]
        for request in (client.post("/c/increment"), client.get("/c")):
            refused = await request
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.text == "Too Many Requests: retry in 1 s\n"
    # A slower refill asks for a longer wait, in whole seconds.
    async with in_process(make_app(burst=1, per_second=0.3)) as client:
        assert (await client.post("/c/increment")).status_code == 200
        refused = await client.post("/c/increment")
        assert refused.headers["retry-after"] == "4"  # 1 token / 0.3 per s = 3.33 s


async def test_refused_requests_do_not_reach_the_counter() -> None:
    clock = ManualClock()
    async with in_process(make_app(burst=2, clock=clock)) as client:
        await client.post("/c/increment")
        await client.post("/c/increment")
        assert (await client.post("/c/increment")).status_code == 429
        await clock.advance(1000)
        assert (await client.get("/c")).json()["value"] == 2


async def test_tokens_refill_as_time_passes() -> None:
    clock = ManualClock()
    async with in_process(make_app(burst=3, per_second=1, clock=clock)) as client:

        async def status() -> int:
            return (await client.post("/c/increment")).status_code

        assert [await status() for _ in range(4)] == [200, 200, 200, 429]
        await clock.advance(999)
        refused = await client.post("/c/increment")
        assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
        await clock.advance(1)  # exactly one token back
        assert [await status() for _ in range(2)] == [200, 429]
        await clock.advance(2500)  # two and a half tokens
        assert [await status() for _ in range(3)] == [200, 200, 429]
        refused = await client.post("/c/increment")
        assert refused.headers["retry-after"] == "1"  # half a token to go
        await clock.advance(60_000)  # never more than the burst
        assert [await status() for _ in range(4)] == [200, 200, 200, 429]
        assert (await client.get("/c", headers=ip("192.0.2.1"))).json()["value"] == 9


async def test_each_client_address_has_its_own_bucket() -> None:
    app = make_app(burst=1)
    async with in_process(app) as client:
        a, b = ip("192.0.2.1"), ip("192.0.2.2")
        assert (await client.post("/c/increment", headers=a)).status_code == 200
        assert (await client.post("/c/increment", headers=a)).status_code == 429
        assert (await client.post("/c/increment", headers=b)).status_code == 200
        # Requests without the header share the "unknown" bucket.
        assert (await client.post("/c/increment")).status_code == 200
        assert (await client.post("/c/increment")).status_code == 429
        # IPv6 clients are limited per /64 network, whatever the spelling.
        first, same, other = "2001:db8:0:1::1", "2001:0db8:0:1:ffff::2", "2001:db8::1"
        assert (await client.get("/c", headers=ip(first))).status_code == 200
        assert (await client.get("/c", headers=ip(same))).status_code == 429
        assert (await client.get("/c", headers=ip(other))).status_code == 200
        mapped = await client.get("/c", headers=ip("::ffff:192.0.2.2"))
        assert mapped.status_code == 429  # the IPv4 client 192.0.2.2
        bad = await client.get("/c", headers=ip("not an address"))
        assert bad.status_code == 400

        limiters = app.runtime.env.RATE_LIMITER
        keys = ["192.0.2.1", "192.0.2.2", "unknown", "2001:db8:0:1::/64"]
        keys.append("2001:db8::/64")
        expected = sorted((limiters.id_from_name(key) for key in keys), key=str)
        assert await list_durable_object_ids(limiters) == expected


async def test_the_client_address_header_is_configurable() -> None:
    app = App(make_worker(burst=1, CLIENT_IP_HEADER="X-Real-IP"), clock=ManualClock())
    async with in_process(app) as client:
        real = {"X-Real-IP": "198.51.100.7"}
        assert (await client.post("/c/increment", headers=real)).status_code == 200
        assert (await client.post("/c/increment", headers=real)).status_code == 429
        # CF-Connecting-IP means nothing now: this is the "unknown" bucket.
        assert (await client.post("/c/increment", headers=ip("1.2.3.4"))).is_success


async def test_an_idle_limiter_deletes_its_storage() -> None:
    clock = ManualClock()
    app = make_app(burst=3, per_second=1, clock=clock)
    async with in_process(app) as client:
        limiters = app.runtime.env.RATE_LIMITER
        assert await list_durable_object_ids(limiters) == []
        await client.post("/c/increment", headers=ip("192.0.2.1"))
        await client.post("/c/increment", headers=ip("192.0.2.1"))
        await clock.advance(500)
        await client.post("/c/increment", headers=ip("192.0.2.2"))
        stub = limiters.get_by_name("192.0.2.1")
        assert await list_durable_object_ids(limiters) == sorted(
            [stub.id, limiters.id_from_name("192.0.2.2")], key=str
        )
        # 192.0.2.1 holds 1 of 3 tokens at START: full again at START + 2000;
        # 192.0.2.2 holds 2 at START + 500: full at START + 1500.
        await clock.advance(999)
        assert len(await list_durable_object_ids(limiters)) == 2
        await clock.advance(1)
        assert await list_durable_object_ids(limiters) == [stub.id]
        await clock.advance(499)
        assert await list_durable_object_ids(limiters) == [stub.id]
        await clock.advance(1)
        assert await list_durable_object_ids(limiters) == []
        # The counters keep their values; a forgotten client has a full bucket.
        assert await list_durable_object_ids(app.runtime.env.COUNTERS) != []
        headers = ip("192.0.2.1")
        codes = [
            (await client.get("/c", headers=headers)).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        assert clock.now_ms() == START + 2000


async def test_the_alarm_waits_longer_when_the_limits_change(tmp_path: Path) -> None:
    clock = ManualClock()
    bindings = counter_app.worker.bindings

    async def run(burst: int, advance_ms: int) -> list[Any]:
        async with Runtime(
            bindings=bindings,
            vars={"RATE_LIMIT_BURST": burst, "RATE_LIMIT_PER_SECOND": 1},
            storage=SQLiteBackend(tmp_path),
            clock=clock,
        ) as rt:
            limiter = rt.env.RATE_LIMITER.get_by_name("192.0.2.1")
            if burst == 2:
                assert [await limiter.take() for _ in range(3)] == [0, 0, 1]
            await clock.advance(advance_ms)
            return await list_durable_object_ids(rt.env.RATE_LIMITER)

    assert len(await run(burst=2, advance_ms=0)) == 1  # alarm at START + 2000
    # Restarted with a bigger burst: the alarm finds the bucket not yet full
    # (2 of 5 tokens at START + 2000) and sets itself for START + 5000.
    assert len(await run(burst=5, advance_ms=4999)) == 1
    assert await run(burst=5, advance_ms=1) == []


def test_limits_come_from_vars() -> None:
    assert counter_app.rate_limit({}) == (10, 1.0)
    assert counter_app.rate_limit({"RATE_LIMIT_BURST": "5"}) == (5, 1.0)
    assert counter_app.rate_limit({"RATE_LIMIT_PER_SECOND": "0.5"}) == (10, 0.5)
    for bad in ({"RATE_LIMIT_BURST": "0"}, {"RATE_LIMIT_PER_SECOND": "-1"}):
        with pytest.raises(ValueError, match="RATE_LIMIT_BURST must be >= 1"):
            counter_app.rate_limit(bad)


# -- over real HTTP ---------------------------------------------------------------


def test_counter_service_over_http(serve: Serve) -> None:
    served = ClockedApp(make_worker(burst=3, per_second=1), ManualClock())
    url = serve(served)
    with httpx.Client(base_url=url, timeout=5) as client:
        a, b = ip("192.0.2.1"), ip("192.0.2.2")
        assert client.post("/apples/increment", headers=a).json()["value"] == 1
        assert client.post("/apples/increment", headers=a).json()["value"] == 2
        assert client.post("/pears/decrement", headers=a).json()["value"] == -1
        refused = client.post("/apples/increment", headers=a)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert client.get("/apples", headers=b).json() == {"name": "apples", "value": 2}
        assert client.get("/pears", headers=b).json() == {"name": "pears", "value": -1}

        served.advance(1000)  # one token back for 192.0.2.1
        assert client.post("/apples/increment", headers=a).json()["value"] == 3
        assert client.post("/apples/increment", headers=a).status_code == 429

        limiters = served.app.runtime.env.RATE_LIMITER
        assert len(served.call(list_durable_object_ids, limiters)) == 2
        served.advance(3000)  # both buckets full again: deleted
        assert served.call(list_durable_object_ids, limiters) == []
        assert client.get("/apples", headers=a).json()["value"] == 3


def test_the_readme_command_serves_it(tmp_path: Path) -> None:
    env = {**os.environ, "RATE_LIMIT_BURST": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pyobjects", "serve"]
    command += ["examples.counter_service.app:worker", "--port", "0"]
    command += ["--storage", str(tmp_path / "data")]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
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
            assert client.post("/hits/increment").json() == {"name": "hits", "value": 1}
            assert client.post("/hits/increment").json()["value"] == 2
            refused = client.post("/hits/increment")
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "pending writes flushed" in out
