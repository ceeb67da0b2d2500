"""What health checking, outlier detection and retries cost per call, against the plain pool.

Run it from the project root, in the project's virtual environment (it starts its own etcd and
three echo servers with the standard health service, each in a process of its own, on free
loopback ports, and stops them all afterwards)::

    python benchmarks/bench_resilience_cost.py                          # about 2 minutes
    python benchmarks/bench_resilience_cost.py --seconds 1 --rounds 2   # a quick smoke run

Progress goes to stderr; stdout gets a markdown table.

Every contender is a ``BalancedChannel`` over the same three servers (``round_robin``), driven by
``--concurrency`` callers that each send a ``--payload``-byte unary request, await the reply and
go again; no call fails, so what is measured is the bookkeeping on the way of every call:

a. baseline: the pool as it was before issue 13: every call is grpc.aio's own call object (the
   benchmark turns the pool's retries off on this one channel by hand, leaving the subchannels'
   options as they were; no public option does just that);
b. the default pool: unary calls are retrying call objects (transparent retries of calls that
   never left);
c. ``health_check=""`` and ``outlier_detection=OutlierDetection()``: a Watch stream per
   subchannel, every call's status counted;
d. a ``retryPolicy`` (on UNAVAILABLE) and ``retryThrottling`` in the service config;
e. all of it: health checking, outlier detection, retry policy and throttling;
f. ``options=[("grpc.enable_retries", 0)]``: no retries at all, neither the pool's nor grpc's
   own (its retry filter in each subchannel's channel costs something on every call too).

Rounds are interleaved as in ``bench_pool.py`` (order rotated and reversed from round to round,
so drifting load on this shared machine hits every contender alike); the table gives medians over
rounds, and each ratio is the median (quartiles in brackets) of the same-round ratios to (a).
Read the CPU column first: the machine has 2 cores shared by the client, three busy servers and
etcd, so calls/s also measures how the scheduler splits them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator

import anyio
from _report import Run
from _resilience_servers import ECHO, servers
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs
from bench_pool import (
    Contender,
    cpu_per_call,
    latency_p50,
    latency_p99,
    log,
    measure,
    median_of,
    ms,
    paired_ratio,
    throughput,
    turn_order,
    us,
    wait_all_ready,
)

from aiodiscovery import OutlierDetection, connect, resolve
from aiodiscovery.testing import EtcdServer

TARGET = "bench/resilience"
SERVERS = 3
NO_RETRIES = ("grpc.enable_retries", 0)
# Marks the baseline: the pool's retries off, nothing else changed.
AS_BEFORE = "as before issue 13"
SERVICE_CONFIG = (
    "grpc.service_config",
    json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    ),
)
CONTENDERS: list[tuple[str, dict[str, object]]] = [
    (f"a. the pool {AS_BEFORE}", {}),
    ("b. default pool (transparent retries)", {}),
    (
        "c. health + outlier detection",
        {"health_check": "", "outlier_detection": OutlierDetection()},
    ),
    ("d. retryPolicy + retryThrottling", {"options": [SERVICE_CONFIG]}),
    (
        "e. health + outlier + retries",
        {
            "options": [SERVICE_CONFIG],
            "health_check": "",
            "outlier_detection": OutlierDetection(),
        },
    ),
    ("f. grpc.enable_retries=0", {"options": [NO_RETRIES]}),
]


@contextlib.asynccontextmanager
async def contenders_for(etcd_url: str) -> AsyncIterator[list[Contender]]:
    client = await connect(etcd_url)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.close)
        contenders = []
        for name, settings in CONTENDERS:
            channel = await resolve(client, f"etcd:///{TARGET}", **settings)  # type: ignore[arg-type]
            await stack.enter_async_context(channel)
            if AS_BEFORE in name:
                # Before its multi-callable is made: it then hands out grpc.aio's own calls.
                channel._pool.retry.enabled = False
            await wait_all_ready(channel, SERVERS)
            echo = channel.unary_unary(ECHO, _registered_method=True)
            assert await echo(b"ping") == b"ping", name
            contenders.append(Contender(name, echo, channel))
        yield contenders


async def main(args: argparse.Namespace) -> None:
    run = Run()
    payload = bytes(i & 255 for i in range(args.payload))
    async with EtcdServer() as etcd:
        with servers(etcd.url, TARGET) as fleet:
            await fleet.start(SERVERS)
            log(f"etcd at {etcd.url}; servers at {', '.join(c.address for c in fleet.children)}")
            async with contenders_for(etcd.url) as contenders:
                for round_no in range(args.rounds):
                    for contender in turn_order(contenders, round_no):
                        result = await measure(
                            contender.echo, payload, args.concurrency, args.warmup, args.seconds
                        )
                        contender.rounds.append(result)
                        log(
                            f"round {round_no + 1}/{args.rounds} {contender.name}: "
                            f"{result.throughput:,.0f} calls/s, CPU {us(result.cpu_per_call)}/call"
                        )
                stats = {c.name: c.channel.statistics() for c in contenders}
    baseline = contenders[0]
    rows = [["contender", "calls/s", "p50", "p99", "client CPU/call", "calls/s vs a", "CPU vs a"]]
    for c in contenders:
        rows.append(
            [
                c.name,
                f"{median_of(c, throughput):,.0f}",
                ms(median_of(c, latency_p50)),
                ms(median_of(c, latency_p99)),
                us(median_of(c, cpu_per_call)),
                paired_ratio(c, baseline, throughput),
                paired_ratio(c, baseline, cpu_per_call),
            ]
        )
    print(
        run.describe(
            f"{SERVERS} echo servers in child processes | {args.concurrency} concurrent "
            f"callers, {args.payload}-byte payload | median of {args.rounds} rounds of "
            f"{args.seconds:g} s (+{args.warmup:g} s warm-up)"
        )
    )
    print(
        "ratios: median (and quartiles) of the same-round ratios to (a); calls/s above 1 is "
        "better, CPU/call below 1 is better. CPU is this client process's only."
    )
    print()
    print(markdown_table(rows))
    retried = sum(s.retries + s.transparent_retries for s in stats.values())
    print()
    print(f"calls retried in the whole run (none should be, no call fails): {retried}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per round")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per contender")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument("--payload", type=int, default=16, help="request size in bytes")
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
