"""Node processes (``pyobjects serve --postgres``) on one schema: real processes.

Every increment returns the counter's new value, so a value acknowledged
twice would be a double write and a value missing from the final count a
lost one.
"""

from __future__ import annotations

import signal
import subprocess
import time
from typing import TYPE_CHECKING

import httpx

from tests.helpers import serve_subprocess
from tests.postgres import sql

if TYPE_CHECKING:
    from pathlib import Path

TTL = "1"


def start(dsn: str, schema: str, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    # --node-port 0: a free port picked by the node itself (a port picked
    # here could be taken by someone else before the node binds it).
    process = serve_subprocess(
        *("--postgres", dsn, "--schema", schema, "--port", "0"),
        *("--lease-ttl", TTL, "--node-port", "0"),
        cwd=tmp_path,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "pyobjects: serving" in line, line + (
        process.stderr.read() if process.stderr else ""
    )
    return process, line.split(" at ")[1].split()[0]


def stop(process: subprocess.Popen[str], sig: signal.Signals) -> int:
    """Send *sig* (if it still runs), wait for the end, close its pipes."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - a hung node
        process.kill()
        process.communicate()
    return process.returncode


def holder(dsn: str, schema: str) -> int:
    """The PID of the node process that holds the (one) object now.

    A lease's owner is ``host:pid:random`` (``PostgresBackend.owner``).
    """
    rows = sql(dsn, f'SELECT owner FROM "{schema}".objects WHERE owner IS NOT NULL')
    assert len(rows) == 1, rows
    return int(str(rows[0][0]).split(":")[1])


def increments_until(
    url: str, name: str, acked: list[int], total: int, deadline: float, timeout: float
) -> int:
    """Increment through *url* until *acked* holds *total* values or time is up.

    Each call may take *timeout* seconds; failed ones are retried after a
    pause. Returns how many failed.
    """
    errors = 0
    with httpx.Client(base_url=url, timeout=timeout) as client:
        while len(acked) < total and time.monotonic() < deadline:
            response = client.get(f"/{name}")
            if response.status_code == 200:
                acked.append(int(response.text))
            else:
                errors += 1
                time.sleep(0.05)
    return errors


def increments(url: str, name: str, count: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return [int(client.get(f"/{name}").text) for _ in range(count)]


def test_any_node_answers_for_any_object(
    database: tuple[str, str], tmp_path: Path
) -> None:
    dsn, schema = database
    one, url1 = start(dsn, schema, tmp_path)
    two, url2 = start(dsn, schema, tmp_path)
    try:
        seen = []
        for _ in range(5):
            seen += increments(url1, "a", 3)
            seen += increments(url2, "a", 3)
        assert seen == list(range(1, 31))  # one instance, through both nodes
    finally:
        assert stop(two, signal.SIGTERM) == 0
        assert stop(one, signal.SIGTERM) == 0


def test_a_graceful_stop_costs_callers_nothing(
    database: tuple[str, str], tmp_path: Path
) -> None:
    dsn, schema = database
    one, url1 = start(dsn, schema, tmp_path)
    two, url2 = start(dsn, schema, tmp_path)
    try:
        assert increments(url1, "a", 2) == [1, 2]
        assert increments(url2, "a", 1) == [3]
        if holder(dsn, schema) == two.pid:  # stop the holder; load the other
            one, two, url1, url2 = two, one, url2, url1
        assert stop(one, signal.SIGTERM) == 0
        assert increments(url2, "a", 3) == [4, 5, 6]  # taken over at once
    finally:
        stop(one, signal.SIGTERM)
        stop(two, signal.SIGTERM)


def test_a_killed_node_loses_no_acknowledged_increment(
    database: tuple[str, str], tmp_path: Path
) -> None:
    dsn, schema = database
    one, url1 = start(dsn, schema, tmp_path)
    two, url2 = start(dsn, schema, tmp_path)
    acked: list[int] = []
    try:
        acked += increments(url1, "a", 20)
        acked += increments(url2, "a", 10)
        if holder(dsn, schema) == two.pid:  # kill the holder; load the other
            one, two, url1, url2 = two, one, url2, url1
        one.kill()
        one.communicate()
        # Node two takes a over once the dead node's lease runs out (about a
        # TTL); until then its callers get retryable errors.
        errors = increments_until(url2, "a", acked, 40, time.monotonic() + 20, 10)
        assert len(acked) == 40, errors
        assert len(set(acked)) == len(acked)  # nothing acknowledged twice
        assert acked == sorted(acked)
        assert acked[:30] == list(range(1, 31))
        rows = sql(dsn, f'SELECT epoch FROM "{schema}".objects')
        assert rows[0][0] >= 2  # a second owner took the object
    finally:
        stop(one, signal.SIGKILL)
        stop(two, signal.SIGTERM)


def test_a_paused_holder_is_fenced_and_its_late_work_rejected(
    database: tuple[str, str], tmp_path: Path
) -> None:
    dsn, schema = database
    one, url1 = start(dsn, schema, tmp_path)
    two, url2 = start(dsn, schema, tmp_path)
    acked: list[int] = []
    try:
        acked += increments(url1, "a", 10)
        acked += increments(url2, "a", 5)
        if holder(dsn, schema) == two.pid:  # pause the holder; load the other
            one, two, url1, url2 = two, one, url2, url1
        one.send_signal(signal.SIGSTOP)  # paused for 3 TTLs
        paused_until = time.monotonic() + 3 * float(TTL)
        # Node two's calls fail (retryable) until one's lease runs out, then
        # two takes a over, within about a TTL.
        errors = increments_until(url2, "a", acked, 25, paused_until + 20, 30)
        assert len(acked) == 25, errors
        took_over = time.monotonic()
        assert took_over < paused_until  # served while one is still paused
        time.sleep(max(0.0, paused_until - time.monotonic()))
        one.send_signal(signal.SIGCONT)
        # The woken node does not serve its stale copy: it finds that its
        # lease is gone and forwards to the new holder.
        acked += increments(url1, "a", 5)
        acked += increments(url2, "a", 5)
        assert len(set(acked)) == len(acked)  # nothing acknowledged twice
        assert acked == sorted(acked)
        assert acked[:15] == list(range(1, 16))
        rows = sql(dsn, f'SELECT epoch, head FROM "{schema}".objects')
        epoch, head = rows[0]
        assert epoch >= 2
        assert head >= len(acked)  # every acknowledged increment is stored
    finally:
        if one.poll() is None:
            one.send_signal(signal.SIGCONT)
        stop(one, signal.SIGTERM)
        stop(two, signal.SIGTERM)
