"""Benchmark of the value codec: plain values, and registered classes.

    python benchmarks/codec.py [--quick] [--baseline SRC] [--rounds N] [--json PATH]

Times ``encode``, ``decode`` and ``copy_value`` (the by-value copy every RPC
argument and result goes through) of pyobjects' codec, in ns per value,
best of several repeats:

- plain values: an int, a short str, a small dict, a list of 100 dicts, a
  mixed value (tuple, set, datetime, UUID, Decimal, nested lists);
- registered values (`pyobjects.register_type`): a dataclass, 100 of them
  in a list, an enum member, a named tuple, a pydantic model and a msgspec
  Struct, each next to the same data converted by hand (``encode`` of a dict
  of its fields, then ``Cls(**decode(...))``), which is what storing such a
  value took before registration existed.

``--baseline SRC`` also measures another checkout's codec (its ``src``
directory, e.g. ``/work/main/src``) in the same run: each side runs in its
own child process, importing pyobjects from its own ``src``, and the two take
turns ``--rounds`` times, the best of all rounds reported, so that a slow
phase of a shared machine hits both. Registered values are measured only
where the checkout has `register_type`. The script imports the private codec
module (``pyobjects._serialization``), which is what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

HERE = Path(__file__).resolve().parent
OWN_SRC = HERE.parent / "src"
OPS = ("encode", "decode", "copy")


def plain_cases() -> dict[str, Any]:
    small = {"name": "pen", "qty": 2, "price": 1.5, "tags": ["a", "b"]}
    mixed = {
        "id": UUID(int=7),
        "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "total": Decimal("12.50"),
        "point": (1, 2),
        "flags": {"x", "y"},
        "rows": [[i, str(i)] for i in range(10)],
    }
    return {
        "int": 12345,
        "str (11 chars)": "hello world",
        "dict of 4": small,
        "list of 100 dicts": [dict(small, qty=i) for i in range(100)],
        "mixed": mixed,
    }


def registered_cases(register_type: Any) -> dict[str, tuple[Any, Any, Any]]:
    """name -> (value, to_plain, from_plain)."""
    import enum

    import msgspec
    import pydantic

    @register_type(name="bench.Item")
    @dataclass(frozen=True, slots=True)
    class Item:
        name: str
        qty: int
        price: float
        tags: list[str]

    @register_type(name="bench.Color")
    class Color(enum.Enum):
        RED = "red"

    @register_type(name="bench.Point")
    class Point(NamedTuple):
        x: int
        y: int

    @register_type(name="bench.Model")
    class Model(pydantic.BaseModel):
        name: str
        qty: int
        price: float
        tags: list[str]

    @register_type(name="bench.Struct")
    class Struct(msgspec.Struct):
        name: str
        qty: int
        price: float
        tags: list[str]

    def fields(x: Any) -> dict[str, Any]:
        return {"name": x.name, "qty": x.qty, "price": x.price, "tags": x.tags}

    item = Item("pen", 2, 1.5, ["a", "b"])
    items = [Item("pen", i, 1.5, ["a", "b"]) for i in range(100)]
    return {
        "dataclass": (item, fields, lambda d: Item(**d)),
        "list of 100 dataclasses": (
            items,
            lambda xs: [fields(x) for x in xs],
            lambda ds: [Item(**d) for d in ds],
        ),
        "enum member": (Color.RED, lambda c: c.value, Color),
        "named tuple": (Point(1, 2), tuple, lambda t: Point(*t)),
        "pydantic model": (
            Model(name="pen", qty=2, price=1.5, tags=["a", "b"]),
            fields,
            Model.model_validate,
        ),
        "msgspec Struct": (
            Struct("pen", 2, 1.5, ["a", "b"]),
            fields,
            lambda d: Struct(**d),
        ),
    }


def best_ns(fn: Any, arg: Any, budget: float) -> float:
    """Best time per call of ``fn(arg)`` over repeats filling *budget* seconds."""
    number = 1
    while True:  # calibrate: one repeat of at least 20 ms
        start = time.perf_counter()
        for _ in range(number):
            fn(arg)
        elapsed = time.perf_counter() - start
        if elapsed >= 0.02:
            break
        number *= 2
    best = elapsed / number
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(number):
            fn(arg)
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e9


def worker(budget: float) -> dict[str, dict[str, float]]:
    """Measure this process's pyobjects (whatever ``sys.path`` finds)."""
    import pyobjects
    from pyobjects._serialization import copy_value, decode, encode

    results: dict[str, dict[str, float]] = {}
    for name, value in plain_cases().items():
        data = encode(value)
        results[name] = {
            "encode": best_ns(encode, value, budget),
            "decode": best_ns(decode, data, budget),
            "copy": best_ns(copy_value, value, budget),
            "bytes": len(data),
        }
    register_type = getattr(pyobjects, "register_type", None)
    cases = registered_cases(register_type or (lambda **_: lambda cls: cls))
    for name, (value, to_plain, from_plain) in cases.items():
        plain = to_plain(value)
        data = encode(plain)

        def by_hand_encode(v: Any, to_plain: Any = to_plain) -> bytes:
            return encode(to_plain(v))

        def by_hand_decode(d: bytes, from_plain: Any = from_plain) -> Any:
            return from_plain(decode(d))

        def by_hand_copy(v: Any, to: Any = to_plain, back: Any = from_plain) -> Any:
            return back(copy_value(to(v)))

        results[f"{name}, by hand"] = {
            "encode": best_ns(by_hand_encode, value, budget),
            "decode": best_ns(by_hand_decode, data, budget),
            "copy": best_ns(by_hand_copy, value, budget),
            "bytes": len(data),
        }
        if register_type is not None:
            data = encode(value)
            results[f"{name}, registered"] = {
                "encode": best_ns(encode, value, budget),
                "decode": best_ns(decode, data, budget),
                "copy": best_ns(copy_value, value, budget),
                "bytes": len(data),
            }
    return results


def run_side(src: Path, budget: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "sys.path.insert(0, sys.argv[2]); import codec, pyobjects; "
        "print(json.dumps({'file': pyobjects.__file__, "
        "'results': codec.worker(float(sys.argv[3]))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(src), str(HERE), str(budget)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(out.stdout)
    where = Path(report["file"]).resolve()
    if not where.is_relative_to(src.resolve()):
        raise SystemExit(f"expected pyobjects from {src}, got {where}")
    return report


def git_revision(src: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(src), "describe", "--always", "--dirty=+dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def merge(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {}
    for results in rounds:
        for case, metrics in results.items():
            slot = best.setdefault(case, dict(metrics))
            for op in OPS:
                slot[op] = min(slot[op], metrics[op])
    return best


def fmt(ns: float | None) -> str:
    if ns is None:
        return "-"
    return f"{ns / 1000:,.2f} µs" if ns >= 1000 else f"{ns:,.0f} ns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (~15 s)")
    parser.add_argument("--baseline", type=Path, metavar="SRC", help="other src dir")
    parser.add_argument("--rounds", type=int, default=None, help="turns per side")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    budget = 0.1 if args.quick else 0.4
    rounds = args.rounds or (1 if args.quick else 3)
    sides = {"this tree": OWN_SRC}
    if args.baseline is not None:
        sides = {"baseline": args.baseline, "this tree": OWN_SRC}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, src in sides.items():
            runs[side].append(run_side(src, budget)["results"])
    best = {side: merge(results) for side, results in runs.items()}
    print(f"Python {platform.python_version()}, {platform.platform()}")
    for side, src in sides.items():
        print(f"{side}: {src} (git {git_revision(src)})")
    print(f"best of {rounds} rounds per side, each op best of repeats\n")
    columns = list(sides)
    header = "| value | op | " + " | ".join(columns) + " |"
    if len(columns) == 2:
        header += " ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for case in best["this tree"]:
        for op in OPS:
            cells = [best[side].get(case, {}).get(op) for side in columns]
            line = f"| {case} | {op} | " + " | ".join(fmt(c) for c in cells) + " |"
            if len(columns) == 2:
                old, new = cells
                line += f" {new / old:.2f}x |" if old and new else " |"
            print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(best, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
