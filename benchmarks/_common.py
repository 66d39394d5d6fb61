"""Small helpers shared by the benchmark scripts of this directory."""

from __future__ import annotations

import cProfile
import os
import platform
import socket
import sys
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Sequence

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu or "unknown"


def pin(cpu: int) -> None:
    """Run this process on *cpu* only, where the platform allows it."""
    cpus = os.cpu_count() or 1
    if cpus >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu % cpus})


def free_port() -> int:
    """A free TCP port on the loopback address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def add_run_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add ``--only NAME ...``, ``--json PATH`` and ``--profile [TOP]``."""
    parser.add_argument(
        "--only",
        nargs="+",
        choices=tuple(names),
        metavar="NAME",
        help=f"run only these: {', '.join(names)}",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=25,
        metavar="TOP",
        help="run each benchmark under cProfile and print its TOP (25) functions"
        " by own time (the results are then slower than normal)",
    )


async def run_benchmark(
    name: str,
    run: Callable[[], Awaitable[list[T]]],
    profiles: list[tuple[str, cProfile.Profile]] | None,
) -> list[T]:
    """Run one benchmark, saying on stderr how long it took.

    With *profiles* (a list), it runs under cProfile, and its profile is added.
    """
    started = time.perf_counter()
    print(f"running {name} ...", end="", file=sys.stderr, flush=True)
    profile = None
    if profiles is not None:
        profile = cProfile.Profile()
        profiles.append((name, profile))
        profile.enable()
    try:
        return await run()
    finally:
        if profile is not None:
            profile.disable()
        print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
