"""A time limit per call into SQLite, so one object cannot freeze the rest (#11).

The limit is measured in real time by SQLite's progress handler (every
``PROGRESS_STEPS`` virtual-machine instructions). These tests never wait for
it: an endless statement is interrupted whatever the machine's speed, and a
fake clock stands in for time where the exact limit matters.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    Runtime,
    SqlError,
    SqlTimeoutError,
)
from pyobjects.testing import run_in_durable_object

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyobjects.storage import StorageBackend

FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
# About a million instructions: reaches the progress handler many times.
LONG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000)"
    " SELECT count(*) AS n FROM c"
)


class Plain(DurableObject):
    pass


async def _run(rt: Runtime, fn: Any, name: str = "x") -> Any:
    async def body(obj: Any, ctx: pyobjects.DurableObjectState) -> Any:
        return fn(ctx.storage)

    return await run_in_durable_object(rt.env.P.get_by_name(name), body)


async def test_an_endless_statement_is_interrupted(backend: StorageBackend) -> None:
    async with Runtime(
        bindings={"P": Plain}, storage=backend, sql_statement_timeout=0.001
    ) as rt:

        def fn(s: Any) -> Any:
            with pytest.raises(SqlTimeoutError) as info:
                s.sql.exec(FOREVER + " SELECT count(*) FROM c")
            error = info.value
            assert isinstance(error, SqlError)
            assert error.limit == 0.001
            assert error.code == "SQLITE_INTERRUPT"
            assert str(error) == (
                "SQL statement interrupted: it ran longer than the 0.001 s "
                "statement time limit (Runtime(sql_statement_timeout=...)): "
                "SQLITE_INTERRUPT"
            )
            # The object carries on; statements that finish quickly still run.
            return s.sql.exec("SELECT 1 AS one").one()

        assert await _run(rt, fn) == {"one": 1}
        # Other objects were never affected.
        assert await _run(rt, lambda s: s.sql.exec("SELECT 2 AS two").one(), "y") == {
            "two": 2
        }


async def test_reading_an_endless_cursor_is_interrupted(
    backend: StorageBackend,
) -> None:
    async with Runtime(
        bindings={"P": Plain}, storage=backend, sql_statement_timeout=0.001
    ) as rt:

        def fn(s: Any) -> None:
            cursor = s.sql.exec(FOREVER + " SELECT x FROM c")
            assert next(cursor) == {"x": 1}
            with pytest.raises(SqlTimeoutError):
                cursor.to_array()  # each read gets the limit anew

        await _run(rt, fn)


def _clock(times: list[float]) -> Iterator[float]:
    yield from times
    while True:
        yield times[-1]


@pytest.mark.parametrize(("after", "interrupted"), [(29.9, False), (30.1, True)])
async def test_the_default_limit_is_30_seconds(
    backend: StorageBackend, after: float, interrupted: bool
) -> None:
    async with Runtime(bindings={"P": Plain}, storage=backend) as rt:

        def fn(s: Any) -> Any:
            sql = s.sql
            # A fake monotonic clock: the statement starts at 0 and every
            # later look at the clock sees *after* seconds gone.
            ticks = _clock([0.0, after])
            sql._now = lambda: next(ticks)
            try:
                return sql.exec(LONG).one()
            except SqlTimeoutError as exc:
                return exc.limit

        result = await _run(rt, fn)
    assert result == (30.0 if interrupted else {"n": 50000})


async def test_an_interrupted_write_resets_a_batch_it_tears(
    backend: StorageBackend,
) -> None:
    async with Runtime(
        bindings={"P": Plain}, storage=backend, sql_statement_timeout=0.001
    ) as rt:
        await _run(rt, lambda s: s.sql.exec("CREATE TABLE t (x)"))

        def fn(s: Any) -> None:
            s.put("k", 1)
            s.sql.exec("INSERT INTO t VALUES (1)")
            # SQLite rolls back the whole transaction when it interrupts a
            # write: the INSERT above is gone, so the object resets.
            with pytest.raises(SqlError):
                s.sql.exec(FOREVER + " INSERT INTO t SELECT x FROM c")

        with pytest.raises(DurableObjectResetError, match="time limit") as info:
            await _run(rt, fn)
        assert info.value.durable_object_reset is True

        def check(s: Any) -> Any:
            return s.sql.exec("SELECT count(*) AS n FROM t").one()

        assert await _run(rt, check) == {"n": 0}
        assert await _run(rt, lambda s: s.kv.get("k")) is None


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="sql_statement_timeout must be > 0"):
        Runtime(bindings={"P": Plain}, sql_statement_timeout=0)


def test_timeout_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(SqlTimeoutError(limit=2.5)))
    assert isinstance(error, SqlTimeoutError)
    assert error.limit == 2.5
    assert "2.5 s" in str(error)
