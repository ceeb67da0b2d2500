"""Fleet scale: 100,000 endpoints, 1,000 channels in one process, and etcd's gRPC proxy.

Run it from the project root, in the project's virtual environment (it starts its own etcd 3.5,
an etcd gRPC proxy and one gRPC server, all on free loopback ports, and stops them afterwards)::

    python benchmarks/bench_fleet.py                                   # about 3 minutes
    python benchmarks/bench_fleet.py --endpoints 20000 --channels 200 --puts 200   # smoke run

Progress goes to stderr; stdout gets one markdown table (measurement | aiodiscovery |
baseline | ratio), every baseline measured in the same run. The machine is shared, so timed
contenders take turns (round by round, or put by put) and the table gives medians.

1. ``--endpoints`` endpoints (100,000) under one service, every ``Addr`` a loopback address
   (``127.x.y.z:<port>``: the pools below dial some of them), written beforehand.

   a. Initial load: the time for ``async with Watcher(...)`` to return holding all of them,
      against the floor any loader pays: the same range read page by page at one revision with
      raw ``Range`` requests (pages of 20,000, well under gRPC's 4 MiB) and every value decoded
      with ``decode_endpoint``; interleaved rounds, medians.
   b. Memory retained per endpoint (``tracemalloc``: Python allocations only) by an open
      ``Watcher``, and by a pool (``resolve(..., subset_size=32)``), which also keeps every
      address's admission (parsed address, keys) to choose its subset from.
   c. Put-to-visible p50 with the big set held against a set of ``--small`` (1,000) endpoints:
      for two Watchers (the key is in ``watcher.snapshot``), then for two pools with
      ``subset_size=32`` (the pool has applied the put's revision), put by put in turns. Each
      put adds a new key; per-change cost independent of the set's size shows as a ratio near 1.

2. ``--channels`` channels (1,000) over ``--targets`` targets (100; 10 channels each) on one
   client, each target's one endpoint a gRPC server in this process: etcd's own count of
   watchers (``etcd_debugging_mvcc_watcher_total`` on its /metrics) before and after, memory per
   channel (resident set size, which includes gRPC's C core, and ``tracemalloc``), and the time
   from a put (new metadata for a target's endpoint) until all 10 channels of that target have
   applied it, against a lone channel on a target of its own (in turns).

3. etcd's gRPC proxy: ``--proxy-clients`` clients (50, each its own connection) watch one
   prefix through the proxy, as many watch another prefix directly: etcd's count of watchers
   each group adds, and the time from a put until every watcher of the group has seen it
   (groups in turns).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import re
import statistics
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib.metadata import version
from typing import Any

import anyio
import anyio.lowlevel
import grpc.aio
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs
from aetcd import rpc

from aiodiscovery import (
    BalancedChannel,
    Endpoint,
    EndpointManager,
    EtcdClient,
    Update,
    Watcher,
    connect,
    decode_endpoint,
    encode_endpoint,
    resolve,
)
from aiodiscovery._etcd.kv import prefix_range_end
from aiodiscovery.testing import EtcdGrpcProxy, EtcdServer

TXN_CHUNK = 128
FLOOR_PAGE = 20_000
Row = list[str]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def ratio_row(name: str, ours: float, base: float, fmt: Callable[[float], str] = ms) -> Row:
    return [name, fmt(ours), fmt(base), f"{ours / base:.2f}x"]


def loopback(i: int, port: int) -> str:
    """The i-th loopback address (127.0.0.1 upwards): dialling it never leaves the machine."""
    i += 1
    return f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{port}"


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def etcd_watchers(etcd: EtcdServer) -> int:
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^etcd_debugging_mvcc_watcher_total (\d+)", text, re.MULTILINE)
    assert match is not None
    return int(match[1])


async def settled_watchers(etcd: EtcdServer) -> int:
    """etcd's watcher count once it has stopped moving (streams close asynchronously)."""
    last = -1
    with anyio.fail_after(30):
        while True:
            now = await anyio.to_thread.run_sync(etcd_watchers, etcd)
            if now == last:
                return now
            last = now
            await anyio.sleep(0.3)


async def write(client: EtcdClient, target: str, count: int, addr: Callable[[int], str]) -> None:
    manager = EndpointManager(client, target)
    prefix = manager.prefix

    async def writer(first: int, step: int) -> None:
        for start in range(first, count, step):
            await manager.update(
                Update.add(f"{prefix}{i:07d}", Endpoint(addr(i)))
                for i in range(start, min(start + TXN_CHUNK, count))
            )

    async with anyio.create_task_group() as tg:
        for lane in range(4):
            tg.start_soon(writer, lane * TXN_CHUNK, 4 * TXN_CHUNK)


async def floor_load(client: EtcdClient, prefix: str) -> int:
    """Every key under ``prefix`` at one revision, in raw pages, each value decoded."""
    start, end = prefix.encode(), prefix_range_end(prefix.encode())
    revision = 0
    decoded: dict[str, Endpoint] = {}
    while True:
        request = rpc.RangeRequest(key=start, range_end=end, limit=FLOOR_PAGE, revision=revision)
        response = await client.unary(lambda m: m.kv.Range, request)
        revision = revision or response.header.revision
        for kv in response.kvs:
            key = kv.key.decode()
            decoded[key] = decode_endpoint(key, kv.value)
        if not response.more:
            return len(decoded)
        start = response.kvs[-1].key + b"\0"


async def watcher_load(client: EtcdClient, target: str) -> int:
    async with Watcher(client, target, start_timeout=60) as watcher:
        return len(watcher.snapshot)


async def timed(load: Callable[[], Awaitable[int]], expected: int) -> float:
    gc.collect()
    started = time.perf_counter()
    loaded = await load()
    elapsed = time.perf_counter() - started
    assert loaded == expected, (loaded, expected)
    return elapsed


async def retained(open_: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
    """Python memory still allocated once ``open_()`` has returned (and its result is held)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = await open_()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, result
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# put-to-visible


class Contender:
    def __init__(self, name: str, prefix: str, visible: Callable[[str, int], Awaitable[None]]):
        self.name, self.prefix, self.visible = name, prefix, visible
        self.samples: list[float] = []


def watcher_visible(watcher: Watcher) -> Callable[[str, int], Awaitable[None]]:
    async def visible(key: str, revision: int) -> None:
        while key not in watcher.snapshot:
            await watcher.wait_for_change()

    return visible


def pools_visible(channels: Sequence[BalancedChannel]) -> Callable[[str, int], Awaitable[None]]:
    async def visible(key: str, revision: int) -> None:
        # The pools' applied revision (private): the pools offer no event to wait on.
        while any(c._pool._revision < revision for c in channels):
            await anyio.lowlevel.checkpoint()

    return visible


async def take_turns(
    client: EtcdClient, contenders: Sequence[Contender], puts: int, warmup: int, port: int
) -> None:
    for n in range(warmup + puts):
        shift = n % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            key = f"{contender.prefix}put-{n:06d}"
            value = encode_endpoint(Endpoint(loopback(900_000 + n, port)))
            started = time.perf_counter()
            response = await client.put(key.encode(), value)
            with anyio.fail_after(30):
                await contender.visible(key, response.header.revision)
            if n >= warmup:
                contender.samples.append(time.perf_counter() - started)


def p50(contender: Contender) -> float:
    return statistics.median(contender.samples)


# ---------------------------------------------------------------------------------------------
# 1. 100,000 endpoints


async def bench_big(client: EtcdClient, args: argparse.Namespace, port: int) -> list[Row]:
    big, small = "bench/fleet-big", "bench/fleet-small"
    log(f"[1] writing {args.endpoints:,} + {args.small:,} endpoints")
    started = time.perf_counter()
    await write(client, big, args.endpoints, lambda i: loopback(i, port))
    await write(client, small, args.small, lambda i: loopback(i, port))
    log(f"    written in {time.perf_counter() - started:.1f} s")

    log(f"[1a] load: 1 warm-up + {args.rounds} rounds, Watcher and floor in turns")
    loads: dict[str, list[float]] = {"watcher": [], "floor": []}
    for n in range(args.rounds + 1):
        order = [("watcher", lambda: watcher_load(client, big)), ("floor", None)]
        if n % 2:
            order.reverse()
        for name, _ in order:
            if name == "watcher":
                elapsed = await timed(lambda: watcher_load(client, big), args.endpoints)
            else:
                elapsed = await timed(lambda: floor_load(client, big + "/"), args.endpoints)
            if n:
                loads[name].append(elapsed)
    watcher_ms, floor_ms = (statistics.median(loads[k]) for k in ("watcher", "floor"))

    log("[1b] memory retained (tracemalloc)")
    async with contextlib.AsyncExitStack() as stack:
        watcher_bytes, _ = await retained(
            lambda: stack.enter_async_context(Watcher(client, big, start_timeout=60))
        )
    async with contextlib.AsyncExitStack() as stack:
        pool_bytes, _ = await retained(
            lambda: stack.enter_async_context(
                BalancedChannel(client, big, subset_size=32, client_id=0, start_timeout=60)
            )
        )
    per = args.endpoints

    log(f"[1c] put-to-visible: {args.warmup} + {args.puts} puts per contender")
    async with Watcher(client, big, start_timeout=60) as wb, Watcher(client, small) as ws:
        watchers = [
            Contender("big", big + "/", watcher_visible(wb)),
            Contender("small", small + "/", watcher_visible(ws)),
        ]
        await take_turns(client, watchers, args.puts, args.warmup, port)
    options = {"subset_size": 32, "client_id": 0, "start_timeout": 60}
    async with (
        BalancedChannel(client, big, **options) as pb,  # type: ignore[arg-type]
        BalancedChannel(client, small, **options) as ps,  # type: ignore[arg-type]
    ):
        pools = [
            Contender("big", big + "/", pools_visible([pb])),
            Contender("small", small + "/", pools_visible([ps])),
        ]
        await take_turns(client, pools, args.puts, args.warmup, port)
    n = f"{args.endpoints:,}"
    return [
        ratio_row(
            f"(1a) load {n}: `async with Watcher` vs raw paged Range + decode_endpoint",
            watcher_ms,
            floor_ms,
        ),
        [
            f"(1b) retained per endpoint: open Watcher over {n}",
            f"{watcher_bytes / per:.0f} B",
            "1,024 B",
            f"{watcher_bytes / per / 1024:.2f}x",
        ],
        [
            f"(1b) retained per endpoint: pool (subset_size=32) and its Watcher, over {n}",
            f"{pool_bytes / per:.0f} B",
            "1,024 B",
            f"{pool_bytes / per / 1024:.2f}x",
        ],
        ratio_row(
            f"(1c) Watcher put-to-visible p50: holding {n} vs {args.small:,}",
            p50(watchers[0]),
            p50(watchers[1]),
        ),
        ratio_row(
            f"(1c) pool (subset 32) put-applied p50: holding {n} vs {args.small:,}",
            p50(pools[0]),
            p50(pools[1]),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 2. 1,000 channels over 100 targets


async def bench_channels(
    client: EtcdClient, etcd: EtcdServer, args: argparse.Namespace, server_addr: str
) -> list[Row]:
    per_target = args.channels // args.targets
    targets = [f"bench/fleet-t{t:03d}" for t in range(args.targets)]
    lone = "bench/fleet-lone"
    log(f"[2] {args.channels} channels over {args.targets} targets")
    for target in [*targets, lone]:
        await EndpointManager(client, target).add_endpoint(f"{target}/e0", Endpoint(server_addr))
    before = await settled_watchers(etcd)
    async with contextlib.AsyncExitStack() as stack:
        gc.collect()
        rss_before = rss()
        tracemalloc.start()
        traced_before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        channels: dict[str, list[BalancedChannel]] = {}
        for target in targets:
            channels[target] = [
                await stack.enter_async_context(await resolve(client, target))
                for _ in range(per_target)
            ]
        opened = time.perf_counter() - started
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced_before
        tracemalloc.stop()
        resident = rss() - rss_before
        during = await settled_watchers(etcd)
        log(f"    opened in {opened:.1f} s; etcd watchers {before} -> {during}")
        lone_channel = await stack.enter_async_context(await resolve(client, lone))

        async def set_metadata(target: str, n: int) -> int:
            value = encode_endpoint(Endpoint(server_addr, f"n={n}"))
            return int((await client.put(f"{target}/e0".encode(), value)).header.revision)

        fan: list[float] = []
        single: list[float] = []
        log(f"    put-to-applied: {args.warmup} + {args.puts} puts per contender, in turns")
        for n in range(args.warmup + args.puts):
            target = targets[n % len(targets)]
            order = [(fan, target, channels[target]), (single, lone, [lone_channel])]
            if n % 2:
                order.reverse()
            for samples, name, group in order:
                started = time.perf_counter()
                revision = await set_metadata(name, n)
                with anyio.fail_after(30):
                    await pools_visible(group)("", revision)
                if n >= args.warmup:
                    samples.append(time.perf_counter() - started)
    after = await settled_watchers(etcd)
    log(f"    closed; etcd watchers back to {after}")
    count = args.channels
    return [
        [
            f"(2) etcd watchers opened by {count:,} channels over {args.targets} targets",
            f"{during - before:,}",
            f"{count:,} (one per channel)",
            f"{(during - before) / count:.2f}x",
        ],
        [
            "(2) memory per channel, resident (incl. gRPC C core) / Python",
            f"{resident / count / 1024:.1f} KiB / {traced / count / 1024:.1f} KiB",
            "-",
            "-",
        ],
        ratio_row(
            f"(2) put until all {per_target} channels of its target applied it, p50, vs 1 lone"
            " channel",
            statistics.median(fan),
            statistics.median(single),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 3. the gRPC proxy


@contextlib.asynccontextmanager
async def watchers_of(urls: str, prefix: str, count: int) -> AsyncIterator[list[Watcher]]:
    async with contextlib.AsyncExitStack() as stack:
        watchers = []
        for _ in range(count):
            client = await connect(urls)
            stack.push_async_callback(client.close)
            watchers.append(await stack.enter_async_context(Watcher(client, prefix)))
        yield watchers


def all_visible(watchers: Sequence[Watcher]) -> Callable[[str, int], Awaitable[None]]:
    async def visible(key: str, revision: int) -> None:
        for watcher in watchers:
            await watcher_visible(watcher)(key, revision)

    return visible


async def bench_proxy(
    client: EtcdClient, etcd: EtcdServer, args: argparse.Namespace, port: int
) -> list[Row]:
    count = args.proxy_clients
    log(f"[3] {count} clients through the gRPC proxy, {count} direct")
    async with EtcdGrpcProxy(etcd) as proxy:
        base = await settled_watchers(etcd)
        async with watchers_of(proxy.url, "bench/fleet-proxied", count) as proxied:
            with_proxy = await settled_watchers(etcd) - base
            async with watchers_of(etcd.url, "bench/fleet-direct", count) as direct:
                direct_added = await settled_watchers(etcd) - base - with_proxy
                contenders = [
                    Contender("proxy", "bench/fleet-proxied/", all_visible(proxied)),
                    Contender("direct", "bench/fleet-direct/", all_visible(direct)),
                ]
                await take_turns(client, contenders, args.puts, args.warmup, port)
    return [
        [
            f"(3) etcd watchers for {count} clients' Watchers of one prefix: via proxy vs direct",
            f"{with_proxy}",
            f"{direct_added}",
            f"{with_proxy / max(direct_added, 1):.2f}x",
        ],
        ratio_row(
            f"(3) put until all {count} clients saw it, p50: via proxy vs direct",
            p50(contenders[0]),
            p50(contenders[1]),
        ),
    ]


# ---------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    rows: list[Row] = []
    try:
        async with EtcdServer(extra_args=["--quota-backend-bytes=4294967296"]) as etcd:
            client = await connect(etcd.url, timeout=30)
            try:
                status = await client.status()
                if "big" in args.only:
                    rows += await bench_big(client, args, port)
                if "channels" in args.only:
                    rows += await bench_channels(client, etcd, args, f"127.0.0.1:{port}")
                if "proxy" in args.only:
                    rows += await bench_proxy(client, etcd, args, port)
            finally:
                await client.close()
    finally:
        await server.stop(None)
    print(
        f"etcd {status.version} (embedded, loopback) | Python {platform.python_version()} | "
        f"grpcio {version('grpcio')} | immutables {version('immutables')} | "
        f"{os.cpu_count()} CPUs | run took {time.perf_counter() - started:.0f} s"
    )
    print()
    print(markdown_table([["measurement", "aiodiscovery", "baseline", "ratio"], *rows]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="timed load rounds (1a)")
    parser.add_argument("--puts", type=int, default=500, help="measured puts per contender")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured puts per contender")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--proxy-clients", type=int, default=50)
    parser.add_argument(
        "--only",
        nargs="+",
        default=["big", "channels", "proxy"],
        choices=["big", "channels", "proxy"],
    )
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
