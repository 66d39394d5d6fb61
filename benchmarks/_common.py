"""Small helpers shared by the benchmark scripts of this directory."""

from __future__ import annotations

import os
import platform
import socket


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
