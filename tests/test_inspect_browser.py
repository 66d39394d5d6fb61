"""``pyobjects inspect --web`` end to end, in a real headless Chromium.

The browser is Debian's ``chromium`` (``apt-get install chromium``; .ci/run
installs it), driven by Playwright for Python with ``executable_path``:
Playwright's own browser downloads are never used. Outside CI the test skips
when either is missing; under ``CI=true`` it fails instead.

The test also takes the screenshots of docs/guides/observability.md: run it
with ``PYOBJECTS_SCREENSHOTS=docs/images`` to write them there.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from pyobjects import Runtime
from pyobjects.storage import SQLiteBackend

from .inspect_data import (
    XSS_KEY,
    XSS_VALUE,
    Counter,
    populate,
    start_inspector,
    stop_inspector as stop_inspector,
)

try:
    from playwright.sync_api import expect, sync_playwright
except ModuleNotFoundError:  # pragma: no cover - the test extra has it
    if os.environ.get("CI"):
        raise
    pytest.skip("needs playwright (the test extra)", allow_module_level=True)

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

CHROMIUM = "/usr/bin/chromium"
# What Chromium needs on this machine: no sandbox as root, no GPU, and no
# background connections (refused here, many at a time).
ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


PREV, NEXT = "\u2039 Prev", "Next \u203a"


def shown(first: int, last: int, total: int) -> str:
    """What a pager says it shows."""
    return f"{first}\u2013{last} of {total}"


def _add_counters(directory: Path, count: int) -> None:
    async def run() -> None:
        async with Runtime(
            bindings={"COUNTER": Counter}, storage=SQLiteBackend(directory)
        ) as rt:
            for i in range(count):
                await rt.env.COUNTER.get_by_name(f"late{i:02d}").add(i)

    # Another thread: Playwright's sync API runs an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, run).result()


def _console(message: ConsoleMessage, problems: list[str]) -> None:
    # A refused request is checked by its response; anything else is wrong.
    if message.type == "error" and not message.text.startswith("Failed to load"):
        problems.append(message.text)


def _screenshot(page: Page, name: str, tmp_path: Path, *, whole: bool) -> None:
    path = tmp_path / name
    page.screenshot(path=path, full_page=whole)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if target := os.environ.get("PYOBJECTS_SCREENSHOTS"):
        shutil.copyfile(path, Path(target) / name)


@pytest.mark.skipif(
    not Path(CHROMIUM).exists()
    and not os.environ.get("CI"),  # in CI it must run: .ci/run installs it
    reason="needs Debian's chromium",
)
def test_the_inspector_in_headless_chromium(tmp_path: Path) -> None:
    directory = tmp_path / ".pyobjects"
    populate(directory)
    process, url = start_inspector(directory)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, chromium_sandbox=False, args=ARGS
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(10_000)
                refused = page.goto(url.partition("?")[0])
                assert refused is not None
                assert refused.status == 403
                expect(page.locator("body")).to_contain_text("holds the token")
                problems: list[str] = []
                failed: list[tuple[str, int]] = []
                page.on("console", lambda m: _console(m, problems))
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.on(
                    "response",
                    lambda r: (
                        failed.append((r.url, r.status)) if r.status >= 400 else None
                    ),
                )
                _browse(page, url, tmp_path)
                _query(page, tmp_path)
                _notes_and_refresh(page, url, directory)
                # No script error, no CSP violation, and the only request
                # refused is the DELETE.
                assert not problems, problems
                assert [(u.rsplit("/", 1)[1], c) for u, c in failed] == [("sql", 400)]
            finally:
                browser.close()
    finally:
        stop_inspector(process)


def _browse(page: Page, url: str, tmp_path: Path) -> None:
    page.goto(url)
    sidebar = page.locator("#namespaces")
    expect(sidebar.locator("h2")).to_have_text(
        ["COUNTER (6 objects)", "LIBRARY (1 object)", "NOTES (1 object)"]
    )
    expect(sidebar.locator("[data-namespace=COUNTER] li")).to_have_count(6)
    expect(sidebar).to_contain_text("home 1 key, 6 B")

    # One object: its facts, its KV entries, its tables.
    sidebar.get_by_role("link", name="central").click()
    expect(page.locator("#object-title")).to_have_text("central")
    expect(page.locator("#alarm")).to_have_text(
        "2026-12-01T10:00:00.000Z (1796119200000 ms)"
    )
    expect(page.locator("#kv tbody tr")).to_have_count(3)
    expect(page.locator("#kv tbody tr").nth(2)).to_have_text(
        'opening_hours{"mon-fri":"9-18","sat":"10-14"}'
    )
    expect(sidebar.locator("a.current")).to_have_text("central 3 keys, 55 B, alarm")

    # A table, page by page.
    page.get_by_role("button", name="books (120 rows)").click()
    view = page.locator("#table-view")
    expect(view.locator("pre")).to_have_text(
        "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
        "author TEXT, year INTEGER)"
    )
    expect(view.locator("th")).to_have_text(["id", "title", "author", "year"])
    expect(view.locator("tbody tr")).to_have_count(50)
    expect(view.locator(".range")).to_have_text(shown(1, 50, 120))
    expect(view.locator("tbody tr").nth(7).locator("td").nth(3)).to_have_text("NULL")
    expect(view.get_by_role("button", name=PREV)).to_be_disabled()
    _screenshot(page, "inspect-web-table.png", tmp_path, whole=False)
    view.get_by_role("button", name=NEXT).click()
    expect(view.locator(".range")).to_have_text(shown(51, 100, 120))
    expect(view.locator("tbody tr").first.locator("td").first).to_have_text("51")
    view.get_by_role("button", name=NEXT).click()
    expect(view.locator(".range")).to_have_text(shown(101, 120, 120))
    expect(view.locator("tbody tr")).to_have_count(20)
    expect(view.get_by_role("button", name=NEXT)).to_be_disabled()
    view.get_by_role("button", name=PREV).click()
    expect(view.locator(".range")).to_have_text(shown(51, 100, 120))
    page.get_by_role("button", name="loans (2 rows)").click()
    expect(view.locator("tbody tr")).to_have_count(2)
    expect(view.locator(".range")).to_have_text(shown(1, 2, 2))


def _query(page: Page, tmp_path: Path) -> None:
    sql = page.locator("#sql")
    sql.fill(
        "SELECT author, count(*) AS copies, min(year) AS year\n"
        "FROM books GROUP BY author ORDER BY author"
    )
    page.get_by_role("button", name="Run").click()
    result = page.locator("#sql-result")
    expect(result.locator("th")).to_have_text(["author", "copies", "year"])
    expect(result.locator("tbody tr")).to_have_count(5)
    expect(result.locator("tbody tr").first).to_have_text("Frank Herbert241965")
    expect(page.locator("#sql-count")).to_have_text("5 rows")
    _screenshot(page, "inspect-web-sql.png", tmp_path, whole=True)
    sql.fill("DELETE FROM books")
    sql.press("Control+Enter")  # the keyboard way
    expect(page.locator("#sql-error")).to_have_text(
        "cannot run that query: not authorized"
    )
    sql.fill("SELECT count(*) AS n FROM books")
    page.get_by_role("button", name="Run").click()
    expect(result.locator("td")).to_have_text("120")  # nothing was deleted


def _notes_and_refresh(page: Page, url: str, directory: Path) -> None:
    # Straight to an object by its address; markup in data stays text.
    page.goto(url + "#/NOTES/notes")
    expect(page.locator("#object-title")).to_have_text("notes")
    kv = page.locator("#kv")
    expect(kv.locator("tbody tr").first).to_have_text(XSS_KEY + f'"{XSS_VALUE}"')
    assert kv.locator("img, script").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    expect(kv.locator(".range")).to_have_text(shown(1, 50, 61))
    kv.get_by_role("button", name=NEXT).click()
    expect(kv.locator(".range")).to_have_text(shown(51, 61, 61))
    expect(kv.locator("tbody tr").last).to_have_text('note:059"note number 59"')
    expect(page.locator("#tables, .empty").last).to_have_text("No SQL tables.")

    # New objects show on Refresh; past 50, the namespace's list pages.
    _add_counters(directory, 45)
    page.get_by_role("button", name="Refresh").click()
    counters = page.locator("[data-namespace=COUNTER]")
    expect(counters.locator("h2")).to_have_text("COUNTER (51 objects)")
    expect(counters.locator("li")).to_have_count(50)
    expect(counters.locator(".range")).to_have_text(shown(1, 50, 51))
    counters.get_by_role("button", name=NEXT).click()
    expect(counters.locator("li")).to_have_count(1)
    expect(counters.locator(".range")).to_have_text(shown(51, 51, 51))
    expect(page.locator("#object-title")).to_have_text("notes")  # still shown
