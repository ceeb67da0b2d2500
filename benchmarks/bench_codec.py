"""What decoding and encoding an endpoint record costs: the Go-faithful codec against baselines.

Run it from the project root, in the project's virtual environment (no etcd needed)::

    python benchmarks/bench_codec.py                   # about 10 s
    python benchmarks/bench_codec.py --old-ref main    # also time the codec of a git revision

The watcher decodes every value it sees, so decoding is the hot path. For each typical value the
table gives the time per call of ``decode_endpoint`` (and of ``encode_endpoint`` for the records
we write), of plain ``json.loads`` (the floor: no Go rules at all) and, with ``--old-ref``, of the
same function as it was at that git revision (loaded from ``git show``), with the ratios. Values in
the exact shape Go's Manager and aiodiscovery write take the fast path; the others show what the
faithful path costs. Best of several rounds of ``timeit``; absolute figures depend on the host,
the contenders take turns round by round and the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _table import markdown_table  # benchmarks/ is on sys.path when a script runs

from aiodiscovery import DecodeError, Endpoint, decode_endpoint, encode_endpoint

VALUES: list[tuple[str, bytes]] = [
    ("Go Manager, no metadata", b'{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}'),
    (
        "string metadata (Go-safe weight)",
        b'{"Op":0,"Addr":"10.0.0.1:50051","Metadata":"weight=2\\u0026zone=eu-west-1a"}',
    ),
    (
        "object metadata",
        b'{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"weight":2,"zone":"eu-west-1a"}}',
    ),
    ("etcd seed doc (no Op)", b'{"Addr":"1.2.3.4","Metadata":"..."}'),
    ("etcdctl by hand (spaces)", b'{"Op": 0, "Addr": "10.0.0.1:50051", "Metadata": null}'),
    ("lower-case field names", b'{"op":0,"addr":"10.0.0.1:50051","metadata":{"weight":2}}'),
    ("metadata nested 600 deep", b'{"Addr":"a","Metadata":' + b"[" * 600 + b"]" * 600 + b"}"),
    (
        "100,000 numbers, spaced (600 KB)",
        b'{"Addr": "a", "Metadata": [' + b", ".join([b"12345"] * 100_000) + b"]}",
    ),
]


def load_old(ref: str) -> types.ModuleType:
    """The package's _endpoint module as it was at git revision ``ref``."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{ref}:aiodiscovery/_endpoint.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("aiodiscovery._old_endpoint")
    module.__package__ = "aiodiscovery"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{ref}:aiodiscovery/_endpoint.py", "exec"), module.__dict__)
    return module


def per_call(functions: list[Callable[[], Any]], rounds: int) -> list[float | None]:
    """Best time per call of each function in microseconds (None if it raises).

    The contenders take turns round by round, so a change in machine load hits them alike.
    """
    timers: list[tuple[timeit.Timer, int] | None] = []
    for function in functions:
        try:
            function()
        except (ValueError, RecursionError):
            timers.append(None)
            continue
        timer = timeit.Timer(function)
        timers.append((timer, timer.autorange()[0]))
    best = [math.inf] * len(timers)
    for _ in range(rounds):
        for i, entry in enumerate(timers):
            if entry is not None:
                timer, number = entry
                best[i] = min(best[i], timer.timeit(number) / number * 1e6)
    return [None if entry is None else b for entry, b in zip(timers, best, strict=True)]


def fmt(micros: float | None) -> str:
    if micros is None:
        return "fails"
    return f"{micros / 1000:.2f} ms" if micros >= 1000 else f"{micros:.2f} µs"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-ref", help="also time the codec of this git revision")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    old = load_old(args.old_ref) if args.old_ref else None
    suffix = [f"at {args.old_ref}", "ratio (new / old)"] if old is not None else []
    rows = [["decode", "aiodiscovery", "json.loads", "ratio", *suffix]]
    for name, value in VALUES:
        print(f"decoding: {name}", file=sys.stderr)
        contenders = [lambda v=value: decode_endpoint("k", v), lambda v=value: json.loads(v)]
        if old is not None:
            contenders.append(lambda v=value: _old_decode(old, v))
        rows.append(row(name, per_call(contenders, args.rounds)))
    print(markdown_table(rows))
    print()
    rows = [["encode", "aiodiscovery", "json.dumps", "ratio", *suffix]]
    for name, endpoint in [
        ("no metadata", Endpoint("10.0.0.1:50051")),
        ("string metadata", Endpoint.with_attributes("10.0.0.1:50051", weight=2, zone="eu")),
        ("object metadata", Endpoint("10.0.0.1:50051", {"weight": 2, "zone": "eu"})),
    ]:
        print(f"encoding: {name}", file=sys.stderr)
        record = {"Op": 0, "Addr": endpoint.addr, "Metadata": endpoint.metadata}
        contenders = [
            lambda e=endpoint: encode_endpoint(e),
            lambda r=record: json.dumps(r, separators=(",", ":")).encode(),
        ]
        if old is not None:
            legacy = old.Endpoint(endpoint.addr, endpoint.metadata)
            contenders.append(lambda e=legacy: old.encode_endpoint(e))
        rows.append(row(name, per_call(contenders, args.rounds)))
    print(markdown_table(rows))


def row(name: str, times: list[float | None]) -> list[str]:
    """A table row: ours, the floor, their ratio, and the old codec with its ratio if timed."""
    cells = [name, fmt(times[0]), fmt(times[1]), ratio(times[0], times[1])]
    if len(times) > 2:
        cells += [fmt(times[2]), ratio(times[0], times[2])]
    return cells


def _old_decode(old: types.ModuleType, value: bytes) -> Any:
    try:
        return old.decode_endpoint("k", value)
    except DecodeError as exc:
        raise ValueError(str(exc)) from None


if __name__ == "__main__":
    main()
