"""Counter increments and pings: workerd (through Miniflare) against pyobjects.

    python benchmarks/workerd.py [--quick] [--rounds N] [--seconds S]
                                 [--workerd-storage memory|disk] [--json PATH]

Issue #16 asks for sequential counter increments on the memory backend at
>= 200,000/s and >= 50x workerd measured in the same run. This script runs
both in one run, taking turns round by round:

- **workerd**: ``benchmarks/workerd/run.mjs`` starts workerd through
  Miniflare (the version pinned in ``benchmarks/workerd/package.json``;
  ``npm ci`` runs there first if ``node_modules`` is missing) with the
  ``Counter`` Durable Object of ``benchmarks/workerd/worker.mjs`` on
  SQLite-backed storage, in memory by default (``--workerd-storage disk``:
  SQLite files, Miniflare's own default). Each round is one request whose
  handler, inside workerd, awaits ``stub.incr()`` (``get("n")``,
  ``put("n", n + 1)``, return ``n + 1``) or ``stub.ping()`` one call after
  another for S seconds over an RPC stub of the object, and times itself
  with ``Date.now()``. Miniflare's start-up is not timed.
- **pyobjects**: the same calls on ``benchmarks/run.py``'s ``Counter`` (plus a
  ``ping()`` returning 1) in a ``Runtime`` on ``MemoryBackend``, timed with
  run.py's ``sequential()`` and ``timed()``.

Before the rounds each side makes a short warm-up round of each call (V8's
JIT, CPython's caches). Every round alternates which side goes first.

How to read it: the table shows the best round of each side (calls/s), and
the median over rounds of the paired ratio pyobjects / workerd (each round's
pyobjects value over the workerd value of the same round), which a slow phase
of a shared machine moves less than the absolute numbers; the details list
every round. workerd's in-worker clock only advances across I/O; every call
on the stub is I/O, so it moves, and the script checks it against the wall
time that the driver measured around the request (which also counts sending
the request and the answer): if it reads less than half of that, the wall
time is used instead (``clock`` in the details says which). Both counters are
checked against the calls made. See benchmarks/README.md and
docs/performance.md ("Against workerd").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from pyobjects import Runtime
from pyobjects.storage import MemoryBackend

# benchmarks/ is not a package: run.py sits next to this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (
    Counter,
    Result,
    machine_info,
    print_report,
    result,
    rounded,
    sequential,
    timed,
    write_json,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "workerd"
OPS = ("incr", "ping")
INCR_TARGET = 200_000.0  # sequential increments/s, pyobjects (#16)
RATIO_TARGET = 50.0  # pyobjects / workerd, increments (#16)
WARMUP_SECONDS = 0.3


class BenchCounter(Counter):
    """run.py's counter, plus the ``ping()`` of the workerd side."""

    async def ping(self) -> int:
        return 1


# -- the workerd side ----------------------------------------------------------


def ensure_node_modules() -> None:
    """``npm ci`` in benchmarks/workerd when its node_modules is missing."""
    if (NODE_DIR / "node_modules" / "miniflare").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "workerd.py needs Node.js and npm (to install Miniflare into"
            f" {NODE_DIR}/node_modules): npm was not found on PATH"
        )
    print(f"npm ci in {NODE_DIR} ...", file=sys.stderr, flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


class Workerd:
    """One ``node run.mjs`` process: Miniflare, started once, serving rounds."""

    def __init__(self, storage: str) -> None:
        node = shutil.which("node")
        if node is None:
            sys.exit("workerd.py needs Node.js: node was not found on PATH")
        self.proc = subprocess.Popen(
            [node, "run.mjs", "--storage", storage],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"the workerd driver did not start: {self.info}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the workerd driver exited (status {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"workerd: {answer['error']}")
        return answer

    def run(self, op: str, seconds: float) -> dict[str, Any]:
        """One round inside workerd: {count, seconds, first, last, wall}."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "seconds": seconds}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the runs ------------------------------------------------------------------


@dataclass
class Run:
    """Everything measured: rates per side and call, workerd's clock checks."""

    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    clocks: list[str] = field(default_factory=list)
    worker_vs_wall: list[float] = field(default_factory=list)
    workerd_info: dict[str, Any] = field(default_factory=dict)


async def run_all(args: argparse.Namespace) -> Run:
    """Start both sides, warm them up, then take turns for ``--rounds``."""
    out = Run()
    for side in ("workerd", "pyobjects"):
        for op in OPS:
            out.rates[side, op] = []
    workerd = Workerd(args.workerd_storage)
    out.workerd_info = workerd.info
    incrs = {"workerd": 0, "pyobjects": 0}
    try:
        async with Runtime(
            bindings={"COUNTER": BenchCounter}, storage=MemoryBackend()
        ) as rt:
            stub = rt.env.COUNTER.get_by_name("bench")
            await stub.reset()
            calls = {"incr": stub.incr, "ping": stub.ping}

            async def workerd_round(
                op: str, seconds: float, *, record: bool = True
            ) -> float:
                r = await anyio.to_thread.run_sync(workerd.run, op, seconds)
                if op == "incr":
                    if (r["first"], r["last"]) != (
                        incrs["workerd"] + 1,
                        incrs["workerd"] + r["count"],
                    ):
                        raise RuntimeError(f"workerd's counter is off: {r}")
                    incrs["workerd"] += r["count"]
                # The in-worker clock, unless it did not move with the calls.
                if r["seconds"] >= 0.5 * r["wall"]:
                    elapsed, clock = r["seconds"], "worker"
                else:
                    elapsed, clock = r["wall"], "wall"
                if record:
                    out.clocks.append(clock)
                    out.worker_vs_wall.append(r["seconds"] / r["wall"])
                return float(r["count"] / elapsed)

            async def pyobjects_round(op: str, seconds: float) -> float:
                n, elapsed = await timed(sequential(calls[op], seconds))
                if op == "incr":
                    incrs["pyobjects"] += n
                return n / elapsed

            print("warming up ...", file=sys.stderr, flush=True)
            for op in OPS:
                await workerd_round(op, WARMUP_SECONDS, record=False)
                await pyobjects_round(op, WARMUP_SECONDS)
            for i in range(args.rounds):
                started = time.perf_counter()
                print(
                    f"round {i + 1}/{args.rounds} ...",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                for op in OPS:
                    sides = [("workerd", workerd_round), ("pyobjects", pyobjects_round)]
                    if i % 2:
                        sides.reverse()
                    for side, measure in sides:
                        out.rates[side, op].append(await measure(op, args.seconds))
                print(
                    f" {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            value = await stub.value()
            if value != incrs["pyobjects"]:
                raise RuntimeError(
                    f"pyobjects' counter reads {value}, {incrs['pyobjects']} calls"
                )
    finally:
        workerd.close()
    return out


def results_of(run: Run, args: argparse.Namespace) -> tuple[list[Result], list[Result]]:
    """The table's rows and ratios."""
    storage = f"SQLite-backed, {args.workerd_storage}"
    labels = {
        "incr": "sequential counter increments",
        "ping": "sequential ping() calls",
    }
    results: list[Result] = []
    ratios: list[Result] = []
    for op in OPS:
        wd, py = run.rates["workerd", op], run.rates["pyobjects", op]
        results.append(
            result(
                f"workerd.{op}",
                f"workerd: {labels[op]} ({storage})",
                max(wd),
                "ops/s",
                rounds=rounded(wd),
                clock="/".join(sorted(set(run.clocks))),
            )
        )
        results.append(
            result(
                f"pyobjects.{op}",
                f"pyobjects: {labels[op]} (MemoryBackend)",
                max(py),
                "ops/s",
                at_least=INCR_TARGET if op == "incr" else None,
                rounds=rounded(py),
            )
        )
        paired = [p / w for p, w in zip(py, wd, strict=True)]
        ratios.append(
            result(
                f"ratio.{op}",
                f"pyobjects / workerd, {op} (median of paired rounds)",
                statistics.median(paired),
                "x",
                at_least=RATIO_TARGET if op == "incr" else None,
                paired_rounds=rounded(paired),
                best_over_best=round(max(py) / max(wd), 2),
            )
        )
    return results, ratios


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="workerd (Miniflare) against pyobjects, one run"
        " (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds of 0.5 s (about 10 s)"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds per side and call (default: 5, quick 3)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="time box of one round (default: 2.0, quick 0.5)",
    )
    parser.add_argument(
        "--workerd-storage",
        choices=("memory", "disk"),
        default="memory",
        help="workerd's SQLite-backed storage in memory or in files"
        " (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.seconds is None:
        args.seconds = 0.5 if args.quick else 2.0
    # What run.machine_info() reads.
    args.backend = "asyncio"
    args.tmpdir = "none (memory)"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    ensure_node_modules()
    info = machine_info(args)
    started = time.perf_counter()
    run = anyio.run(run_all, args)
    info["seconds"] = round(time.perf_counter() - started, 1)
    wd = run.workerd_info
    info["workerd"] = {k: v for k, v in wd.items() if k != "ready"}
    info["worker_clock_over_wall"] = rounded(run.worker_vs_wall)
    results, ratios = results_of(run, args)
    walls = run.clocks.count("wall")
    clock = (
        "its in-worker clock"
        if not walls
        else f"the driver's wall clock in {walls} of {len(run.clocks)} rounds"
    )
    extra = {
        "workerd": f"workerd {wd['workerd']} (npm), Miniflare {wd['miniflare']},"
        f" node {wd['node']}, compatibility date {wd['compatibility_date']},"
        f" storage {wd['storage']}",
        "rounds": f"{args.rounds} of {args.seconds:g} s per side and call;"
        f" workerd timed by {clock}; its in-worker clock read"
        f" {min(run.worker_vs_wall):.3f}-{max(run.worker_vs_wall):.3f}"
        " of the driver's wall time around each request",
    }
    print_report(info, results, ratios, extra=extra)
    if args.json:
        write_json(args.json, info, results, ratios)


if __name__ == "__main__":
    main()
