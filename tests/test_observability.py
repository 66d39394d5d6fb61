"""What a runtime tells its operator: statistics, lifecycle logs (#17)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from pyobjects import DurableObject, DurableObjectResetError, Runtime

if TYPE_CHECKING:
    from pyobjects.testing import ManualClock


class Writer(DurableObject):
    async def write(self, key: str, size: int) -> None:
        self.ctx.storage.put(key, b"x" * size)

    async def remove(self, key: str) -> None:
        self.ctx.storage.delete(key)

    async def quit(self) -> None:
        self.ctx.abort("operator test")


async def test_statistics_count_commit_time_and_bytes_written(
    manual_clock: ManualClock,
) -> None:
    async with Runtime(bindings={"W": Writer}, clock=manual_clock) as rt:
        assert rt.statistics().bytes_written == 0
        assert rt.statistics().commit_seconds == 0
        stub = rt.env.W.get_by_name("w")
        await stub.write("ab", 1_000)
        first = rt.statistics()
        # The value's msgpack encoding is a little longer than its 1,000 bytes.
        assert 1_002 < first.bytes_written < 1_020
        assert first.commit_seconds > 0
        await stub.remove("ab")
        second = rt.statistics()
        assert second.bytes_written == first.bytes_written + 2  # the key only
        assert second.commits == 2
        assert second.commit_seconds >= first.commit_seconds
        assert second.namespaces["W"].bytes_written == second.bytes_written
        await stub.write("é", 0)  # a key of two UTF-8 bytes
        third = rt.statistics()
        assert third.bytes_written - second.bytes_written == 2 + 2  # key + b""


async def test_lifecycle_events_are_logged(
    manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pyobjects")
    async with Runtime(
        bindings={"W": Writer}, clock=manual_clock, idle_timeout=1
    ) as rt:
        stub = rt.env.W.get_by_name("logged")
        await stub.write("k", 1)
        await manual_clock.advance(1_000)  # idle: evicted
        with pytest.raises(DurableObjectResetError):
            await stub.quit()
    lines = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "pyobjects"
    ]
    constructed = [m for level, m in lines if m.startswith("constructed Writer")]
    assert len(constructed) == 2  # before the eviction and after it
    assert "'logged'" in constructed[0]
    assert any(m.startswith("evicted Writer") for _, m in lines)
    resets = [(level, m) for level, m in lines if m.startswith("reset Writer")]
    assert len(resets) == 1
    assert resets[0][0] == logging.INFO
    assert "operator test" in resets[0][1]
