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


def test_sql_migration_example_migrates_and_keeps_the_data() -> None:
    output = _run("sql_migration.py").splitlines()
    assert output[0] == "run 1: schema version 1 (migrated from 0), indexes []"
    assert output[1].startswith("run 1: query plan: SCAN")  # the whole table
    assert output[2] == (
        "run 2: schema version 2 (migrated from 1), indexes ['notes_open']"
    )
    assert output[3] == (
        "run 2: open notes after the restart: ['call Charles', 'write the report']"
    )
    assert output[4].startswith("run 2: query plan: SEARCH")
    assert "USING INDEX notes_open" in output[4]
    assert len(output) == 5


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {"counter.py", "sql_migration.py"}, (
        "add a test for each new example"
    )
    # The applications (one directory each) are tested in tests/examples/.
    apps = {p.name for p in EXAMPLES.iterdir() if p.is_dir() and p.name[0] != "_"}
    assert apps == {
        "counter_service",
        "conditional_store",
        "chat_room",
        "collab_doc",
        "game_room",
        "python_workers_chat",
    }, "add tests/examples/test_<name>.py for each new application"
    tests = Path(__file__).parent / "examples"
    listing = (EXAMPLES.parent / "docs" / "examples.md").read_text()
    for app in apps:
        assert (EXAMPLES / app / "app.py").is_file()
        assert (EXAMPLES / app / "README.md").is_file()
        assert (tests / f"test_{app}.py").is_file()
        assert f"examples/{app}/" in listing, "list it in docs/examples.md"
