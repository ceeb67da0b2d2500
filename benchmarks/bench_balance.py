"""Load-aware balancing against servers of unequal speed: latency and throughput per policy.

Run it from the project root, in the project's virtual environment (it starts its own etcd and its
servers, each in a process of its own, on free loopback ports, and stops them all afterwards)::

    python benchmarks/bench_balance.py               # about 4 minutes
    python benchmarks/bench_balance.py --rounds 1    # a quick smoke run

Progress goes to stderr; stdout gets three markdown tables.

Three servers, each serving ``--slots`` calls at once (the others queue, as in any server with a
bounded pool of workers), registered in etcd and reporting their load with ORCA
(:class:`~aiodiscovery.LoadReporter`: ``application_utilization`` is the share of the slots in
use). ``--callers`` callers call back to back, closed loop, through a fresh channel per
contender and round (``--warmup`` seconds unmeasured, then ``--seconds`` measured; order rotated
from round to round). Contenders: ``round_robin`` (the baseline), ``p2c``, ``least_request`` and
``weighted_round_robin`` (reports every 0.2 s, blackout 1 s, weights every 0.2 s: A58's defaults,
10 s and 1 s, would spend the whole run in blackout).

1. one server 3x slower: service times of ``--service`` ms, the same, and three times that;
2. one server turns busy half-way: all equal, then one becomes 3x slower half-way through the
   measured period;
3. the hot path: no service time and no slot limit, so the client's own cost per call decides the
   calls/s: ``round_robin`` on servers without reports (the baseline), ``round_robin`` on servers
   with them (the server's cost) and ``weighted_round_robin`` on them (both sides' cost); these
   servers report CPU utilization (no slots: they only spend CPU). Client CPU per call is the
   steadier figure on a shared machine: calls/s also moves with what the other processes do.

Each cell is the median over rounds; the ratios are medians of same-round ratios to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from _balance_servers import UNARY, LoadServers, set_service_time
from _report import Run
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs
from bench_pool import log, turn_order, wait_all_ready

from aiodiscovery import EtcdClient, WeightedRoundRobin, connect, resolve
from aiodiscovery.testing import EtcdServer

SERVERS = 3
WRR = WeightedRoundRobin(oob_reporting_period=0.2, blackout_period=1.0, weight_update_period=0.2)


@dataclass(frozen=True)
class Contender:
    name: str
    policy: Any
    target: str


@dataclass
class Result:
    latencies: list[float]
    wall: float
    # The client process's CPU seconds (all its threads) over the measured period.
    cpu: float
    # Share of the measured calls each server took, by address.
    shares: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall

    @property
    def cpu_per_call(self) -> float:
        return self.cpu / len(self.latencies)

    def quantile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


async def measure(
    client: EtcdClient,
    contender: Contender,
    args: argparse.Namespace,
    midway: Callable[[], Awaitable[None]] | None = None,
) -> Result:
    async with await resolve(client, contender.target, policy=contender.policy) as channel:
        await wait_all_ready(channel, SERVERS)
        call = channel.unary_unary(UNARY)
        latencies: list[float] = []
        state = {"measuring": False, "stop": False}

        async def caller() -> None:
            clock = time.perf_counter
            while not state["stop"]:
                started = clock()
                await call(b"x", timeout=60)
                if state["measuring"]:
                    latencies.append(clock() - started)

        async with anyio.create_task_group() as tg:
            for _ in range(args.callers):
                tg.start_soon(caller)
            await anyio.sleep(args.warmup)
            before = {a: s.picks for a, s in channel.statistics().subchannels.items()}
            state["measuring"] = True
            started, cpu = time.perf_counter(), time.process_time()
            if midway is None:
                await anyio.sleep(args.seconds)
            else:
                await anyio.sleep(args.seconds / 2)
                await midway()
                await anyio.sleep(args.seconds / 2)
            state["measuring"] = False
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            after = {a: s.picks for a, s in channel.statistics().subchannels.items()}
            state["stop"] = True
    picks = {a: after[a] - before.get(a, 0) for a in after}
    total = sum(picks.values()) or 1
    return Result(latencies, wall, cpu, {a: n / total for a, n in picks.items()})


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(
    title: str,
    contenders: Sequence[Contender],
    results: dict[str, list[Result]],
    watched: str | None,
) -> str:
    baseline = results[contenders[0].name]
    rows = [
        [
            "policy",
            "p50 ms",
            "p99 ms",
            "calls/s",
            "client CPU µs/call",
            "slow server's share",
            "p99 ratio",
            "calls/s ratio",
            "CPU/call ratio",
        ]
    ]
    for contender in contenders:
        mine = results[contender.name]
        pairs = list(zip(mine, baseline, strict=True))
        shares = [m.shares.get(watched, 0.0) for m in mine] if watched else []
        rows.append(
            [
                contender.name,
                ms(median([m.quantile(50) for m in mine])),
                ms(median([m.quantile(99) for m in mine])),
                f"{median([m.rate for m in mine]):.0f}",
                f"{median([m.cpu_per_call for m in mine]) * 1e6:.0f}",
                f"{100 * median(shares):.0f}%" if shares else "-",
                f"{median([m.quantile(99) / b.quantile(99) for m, b in pairs]):.2f}",
                f"{median([m.rate / b.rate for m, b in pairs]):.3f}",
                f"{median([m.cpu_per_call / b.cpu_per_call for m, b in pairs]):.3f}",
            ]
        )
    return f"### {title}\n\n{markdown_table(rows)}\n"


async def scenario(
    client: EtcdClient,
    contenders: Sequence[Contender],
    args: argparse.Namespace,
    prepare: Callable[[], Awaitable[None]],
    midway: Callable[[], Awaitable[None]] | None = None,
    rounds: int | None = None,
) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {c.name: [] for c in contenders}
    for round_no in range(rounds or args.rounds):
        for contender in turn_order(contenders, round_no):
            await prepare()
            result = await measure(client, contender, args, midway)
            results[contender.name].append(result)
            log(
                f"round {round_no + 1} {contender.name}: p50 {ms(result.quantile(50))} ms, "
                f"p99 {ms(result.quantile(99))} ms, {result.rate:.0f} calls/s"
            )
    return results


async def main(args: argparse.Namespace) -> None:
    run = Run()
    service = args.service / 1000
    async with EtcdServer() as etcd:
        client = await connect(etcd.url)
        reporting = LoadServers(etcd.url, "bench/balance", args.slots, report=True)
        plain = LoadServers(etcd.url, "bench/balance-plain", 0, report=False)
        hot_reporting = LoadServers(etcd.url, "bench/balance-hot", 0, report=True)
        try:
            await reporting.start(SERVERS)
            addresses = [c.address for c in reporting.children]
            policies = [
                ("round_robin", "round_robin"),
                ("p2c", "p2c"),
                ("least_request", "least_request"),
                ("weighted_round_robin", WRR),
            ]
            contenders = [Contender(n, p, "bench/balance") for n, p in policies]

            async def times(*values: float) -> None:
                for address, value in zip(addresses, values, strict=True):
                    await set_service_time(address, value)

            async def one_slow() -> None:
                await times(service, service, 3 * service)

            async def all_equal() -> None:
                await times(service, service, service)

            async def turn_busy() -> None:
                await set_service_time(addresses[2], 3 * service)

            log("scenario 1: one server 3x slower")
            slow = await scenario(client, contenders, args, one_slow)
            log("scenario 2: one server turns busy half-way")
            busy = await scenario(client, contenders, args, all_equal, turn_busy)
            log("scenario 3: the hot path")
            await plain.start(SERVERS)
            await hot_reporting.start(SERVERS)
            hot = [
                Contender(
                    "round_robin, servers without reports", "round_robin", "bench/balance-plain"
                ),
                Contender("round_robin, servers reporting", "round_robin", "bench/balance-hot"),
                Contender("weighted_round_robin, servers reporting", WRR, "bench/balance-hot"),
            ]
            hot_args = argparse.Namespace(
                **{**vars(args), "warmup": 1.0, "seconds": args.hot_seconds}
            )

            async def nothing() -> None:
                return None

            hot_results = await scenario(client, hot, hot_args, nothing, rounds=args.hot_rounds)
        finally:
            for pool in (reporting, plain, hot_reporting):
                pool.stop()
            await client.close()
    print(
        run.describe(
            f"{SERVERS} servers x {args.slots} slots, {args.service:g} ms service time, "
            f"{args.callers} callers, {args.rounds} rounds of {args.warmup:g} + {args.seconds:g} s"
        )
    )
    print()
    watched = addresses[2]
    print(table("One server 3x slower", contenders, slow, watched))
    print(table("One server turns 3x slower half-way", contenders, busy, watched))
    print(table("Hot path: equal servers, no service time", hot, hot_results, None))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--service", type=float, default=10.0, help="service time, ms")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--hot-rounds", type=int, default=3)
    parser.add_argument("--hot-seconds", type=float, default=4.0)
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
