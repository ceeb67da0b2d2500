"""What untrusted registry values cost a client: memory a Watcher holds, with and without a budget.

Run it from the project root, in the project's virtual environment (it starts its own etcd)::

    python benchmarks/bench_value_memory.py        # about 30 s

For each registry the table gives the stored size, what one ``Watcher`` holds after its first
list (tracemalloc, after a garbage collection), the ratio of the two and the time the list took,
for a client without a bound (``connect(metadata_budget=None)``: what every client did before,
and what Go's client does: the baseline) and with the default budget (64 KiB, or 4 x the stored
value). Registries: the issue's three and six values of 1.35 MB holding ``[{},{},...]``, and 1,000
ordinary endpoints with string metadata, to show that the budget costs them nothing.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

from _report import Run
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs
from aetcd import rpc

import aiodiscovery
from aiodiscovery import DEFAULT_METADATA_BUDGET, Watcher
from aiodiscovery.testing import EtcdServer

EMPTIES = b'{"Addr":"127.0.0.1:1","Metadata":[' + b",".join([b"{}"] * 450_000) + b"]}"
ORDINARY = b'{"Op":0,"Addr":"10.0.%d.%d:50051","Metadata":"weight=2&zone=eu-west-1a"}'

REGISTRIES: list[tuple[str, list[bytes]]] = [
    ("3 x 1.35 MB [{},...]", [EMPTIES] * 3),
    ("6 x 1.35 MB [{},...]", [EMPTIES] * 6),
    ("1,000 ordinary endpoints", [ORDINARY % (i // 250, i % 250) for i in range(1000)]),
]


async def put(client: aiodiscovery.EtcdClient, prefix: str, values: list[bytes]) -> None:
    for i, value in enumerate(values):
        request = rpc.PutRequest(key=f"{prefix}{i:04}".encode(), value=value)
        await client.unary(lambda m: m.kv.Put, request)


async def held(url: str, service: str, budget: int | None) -> tuple[int, float, int]:
    """Bytes a fresh client's Watcher holds after listing ``service``, the list's seconds and
    the endpoints it kept."""
    client = await aiodiscovery.connect(url, metadata_budget=budget)
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        async with Watcher(client, service) as watcher:
            took = time.perf_counter() - started
            gc.collect()
            size = tracemalloc.get_traced_memory()[0] - before
            kept = len(watcher.snapshot)
        tracemalloc.stop()
    finally:
        await client.close()
    return size, took, kept


async def main() -> None:
    run = Run()
    rows = [["registry", "stored", "client", "kept", "held", "held / stored", "list"]]
    async with EtcdServer() as etcd:
        writer = await aiodiscovery.connect(etcd.url)
        try:
            for number, (name, values) in enumerate(REGISTRIES):
                service = f"bench/memory{number}"
                await put(writer, service + "/", values)
                stored = sum(len(v) for v in values)
                for label, budget in [("no bound (baseline)", None), ("default budget", 65536)]:
                    size, took, kept = await held(etcd.url, service, budget)
                    rows.append(
                        [
                            name,
                            f"{stored / 1e6:.2f} MB",
                            label,
                            f"{kept:,}",
                            f"{size / 1e6:.2f} MB",
                            f"{size / stored:.2f}",
                            f"{took * 1000:.0f} ms",
                        ]
                    )
        finally:
            await writer.close()
    assert DEFAULT_METADATA_BUDGET == 65536
    print(run.describe("one etcd 3.5.1 on loopback, a fresh client per row"))
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    asyncio.run(main())
