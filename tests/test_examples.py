"""Every script in examples/ runs and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_counter_example_keeps_counting_across_runs(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = _run("counter.py", data)
    assert "counter 'global': 0 -> 1" in first
    assert "counter 'burst': 0 -> 10 after 10 concurrent increments" in first
    second = _run("counter.py", data)
    assert "counter 'global': 1 -> 2" in second
    assert "counter 'burst': 10 -> 20" in second


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {"counter.py"}, "add a test for each new example"
