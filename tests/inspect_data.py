"""A storage directory for the web inspector's tests (and its screenshots)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio

from pyobjects import AlarmInfo, DurableObject, Runtime
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import ManualClock

if TYPE_CHECKING:
    from pathlib import Path

# 2026-12-01T09:00:00Z; the library's alarm is an hour later.
START_MS = 1_796_115_600_000
ALARM_MS = START_MS + 3_600_000
BOOKS = 120
XSS_KEY = '<img src=x onerror="window.pwned = 1">'
XSS_VALUE = "<script>window.pwned = 2</script>"
_TITLES = [
    ("Dune", "Frank Herbert", 1965),
    ("Emma", "Jane Austen", 1815),
    ("Ulysses", "James Joyce", 1922),
    ("Middlemarch", "George Eliot", 1871),
    ("Beloved", "Toni Morrison", 1987),
]


class Library(DurableObject):
    """KV values, two SQL tables (one long enough to page) and an alarm."""

    async def stock(self) -> None:
        sql = self.ctx.storage.sql
        sql.exec(
            "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
            "author TEXT, year INTEGER)"
        )
        sql.exec("CREATE TABLE loans (book_id INTEGER, member TEXT, due TEXT)")
        for i in range(BOOKS):
            title, author, year = _TITLES[i % len(_TITLES)]
            copy = i // len(_TITLES) + 1
            sql.exec(
                "INSERT INTO books (title, author, year) VALUES (?, ?, ?)",
                f"{title} (copy {copy})",
                author,
                None if i == 7 else year,
            )
        sql.exec("INSERT INTO loans VALUES (1, 'ada', '2026-12-15')")
        sql.exec("INSERT INTO loans VALUES (3, 'grace', '2026-12-20')")
        self.ctx.storage.put("opening_hours", {"mon-fri": "9-18", "sat": "10-14"})
        self.ctx.storage.put("members", 3)
        self.ctx.storage.put("logo", b"\x89PNG")
        self.ctx.storage.set_alarm(ALARM_MS)

    async def alarm(self, alarm_info: AlarmInfo) -> None:
        """Never reached: the clock does not move."""


class Counter(DurableObject):
    async def add(self, n: int) -> None:
        self.ctx.storage.put("value", n)


class Notes(DurableObject):
    """Many keys (for KV paging), one of them markup that must stay text."""

    async def fill(self, count: int) -> None:
        for i in range(count):
            self.ctx.storage.put(f"note:{i:03d}", f"note number {i}")
        self.ctx.storage.put(XSS_KEY, XSS_VALUE)


def populate(directory: Path) -> dict[str, str]:
    """Fill *directory*; return the ids of the objects by label."""

    async def run() -> dict[str, str]:
        async with Runtime(
            bindings={"LIBRARY": Library, "COUNTER": Counter, "NOTES": Notes},
            storage=SQLiteBackend(directory),
            clock=ManualClock(start_ms=START_MS),
        ) as rt:
            library = rt.env.LIBRARY.get_by_name("central")
            await library.stock()
            ids = {"library": str(library.id)}
            for i, name in enumerate(["home", "about", "blog", "shop", "faq"]):
                counter = rt.env.COUNTER.get_by_name(name)
                await counter.add(i + 1)
                ids[name] = str(counter.id)
            unnamed = rt.env.COUNTER.get(rt.env.COUNTER.new_unique_id())
            await unnamed.add(99)
            ids["unnamed"] = str(unnamed.id)
            notes = rt.env.NOTES.get_by_name("notes")
            await notes.fill(60)
            ids["notes"] = str(notes.id)
            return ids

    return anyio.run(run)


def start_inspector(directory: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``pyobjects inspect --web`` on *directory*; return it and its URL.

    It runs in the directory's parent, given the directory's name, as a user
    would type ``pyobjects inspect --web --storage .pyobjects``.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pyobjects", "inspect", "--web"]
    process = subprocess.Popen(
        [*command, "--storage", directory.name],
        cwd=directory.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("pyobjects: inspecting "), first
    url = process.stdout.readline().removeprefix("pyobjects: open ").strip()
    assert url.startswith("http://127.0.0.1:"), url
    return process, url


def stop_inspector(process: subprocess.Popen[str]) -> str:
    """Stop it as Ctrl-C does; return what it wrote on stderr."""
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return err
