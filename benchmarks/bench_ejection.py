"""How soon a server that starts failing every call is ejected, and what that saves.

Run it from the project root, in the project's virtual environment (it starts its own etcd and
three echo servers, each in a process of its own, on free loopback ports, and stops them all
afterwards)::

    python benchmarks/bench_ejection.py              # about 1.5 minutes
    python benchmarks/bench_ejection.py --rounds 2   # a quick smoke run

Progress goes to stderr; stdout gets a markdown table.

Each round, for each contender in turn (order rotated and reversed from round to round): a fresh
channel, ``--callers`` callers calling it back to back (unary echo); after ``--before`` seconds
one server (a different one each round) is told to fail every call with UNAVAILABLE; the callers
go on for ``--window`` seconds; then the server is told to stop failing and the channel closed.
Contenders:

a. baseline: no outlier detection: the bad server keeps its third of the calls;
b. ``OutlierDetection()`` with its defaults: 5 failures in a row eject a server at once;
c. failure percentage alone, as gRPC's ``outlier_detection`` policy does it: every
   ``--interval`` seconds, a server with at least 50 calls of which more than 85 % failed
   (``failure_percentage_minimum_hosts=3`` so that three servers are enough).

The table gives, per contender, the median over rounds (quartiles in brackets) of the time from
switching the server bad to its ejection (the pool's warning), and of the calls that failed in
the window; the ratio is the median of the same-round ratios of failed calls to (a)'s.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field

import anyio
import grpc
import grpc.aio
from _report import Run, quartiles
from _resilience_servers import ECHO, Servers, servers, set_failing
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs
from bench_pool import log, turn_order, wait_all_ready

from aiodiscovery import EtcdClient, OutlierDetection, connect, resolve
from aiodiscovery.testing import EtcdServer

TARGET = "bench/ejection"
SERVERS = 3


@dataclass
class Round:
    failed: int
    calls: int
    # Seconds from switching the server bad to its ejection; None if it was not ejected.
    ejected_after: float | None


@dataclass
class Contender:
    name: str
    config: OutlierDetection | None
    rounds: list[Round] = field(default_factory=list)


class Ejections(logging.Handler):
    """Notes when the pool logs an ejection."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if " ejected for " in record.getMessage():
            self.times.append(time.monotonic())


async def one_round(
    contender: Contender,
    client: EtcdClient,
    fleet: Servers,
    victim: int,
    ejections: Ejections,
    args: argparse.Namespace,
) -> Round:
    outcomes: list[bool] = []
    stop = anyio.Event()
    async with await resolve(
        client, f"etcd:///{TARGET}", outlier_detection=contender.config
    ) as channel:
        await wait_all_ready(channel, SERVERS, timeout=30)
        echo = channel.unary_unary(ECHO, _registered_method=True)

        async def caller() -> None:
            while not stop.is_set():
                try:
                    await echo(b"x", timeout=5)
                except grpc.aio.AioRpcError:
                    outcomes.append(False)
                else:
                    outcomes.append(True)

        address = fleet.children[victim].address
        async with anyio.create_task_group() as tg:
            for _ in range(args.callers):
                tg.start_soon(caller)
            await anyio.sleep(args.before)
            ejections.times.clear()
            counted = len(outcomes)
            await set_failing(address, "UNAVAILABLE")
            bad_since = time.monotonic()
            await anyio.sleep(args.window)
            stop.set()
        await set_failing(address, "")
    window = outcomes[counted:]
    return Round(
        failed=window.count(False),
        calls=len(window),
        ejected_after=ejections.times[0] - bad_since if ejections.times else None,
    )


def ratio(ours: Contender, baseline: Contender) -> str:
    if ours is baseline:
        return "1.00x"
    ratios = [
        mine.failed / theirs.failed
        for mine, theirs in zip(ours.rounds, baseline.rounds, strict=True)
        if theirs.failed
    ]
    return quartiles(ratios, 3, "x") if ratios else "n/a"


async def main(args: argparse.Namespace) -> None:
    run = Run()
    contenders = [
        Contender("a. no outlier detection", None),
        Contender("b. OutlierDetection() (5 failures in a row)", OutlierDetection()),
        Contender(
            f"c. failure percentage, every {args.interval:g} s",
            OutlierDetection(
                interval=args.interval,
                enforcing_consecutive_failures=0,
                enforcing_success_rate=0,
                enforcing_failure_percentage=100,
                failure_percentage_minimum_hosts=SERVERS,
            ),
        ),
    ]
    ejections = Ejections()
    logging.getLogger("aiodiscovery.pool").addHandler(ejections)
    async with EtcdServer() as etcd:
        with servers(etcd.url, TARGET) as fleet:
            await fleet.start(SERVERS)
            log(f"etcd at {etcd.url}; servers at {', '.join(c.address for c in fleet.children)}")
            client = await connect(etcd.url)
            try:
                for round_no in range(args.rounds):
                    for contender in turn_order(contenders, round_no):
                        result = await one_round(
                            contender, client, fleet, round_no % SERVERS, ejections, args
                        )
                        contender.rounds.append(result)
                        when = (
                            "not ejected"
                            if result.ejected_after is None
                            else f"ejected after {result.ejected_after * 1e3:.0f} ms"
                        )
                        log(
                            f"round {round_no + 1}/{args.rounds} {contender.name}: {when}, "
                            f"{result.failed} of {result.calls} calls failed"
                        )
            finally:
                await client.close()
    baseline = contenders[0]
    rows = [["contender", "time to ejection", "failed calls in the window", "failed vs a"]]
    for c in contenders:
        times = [r.ejected_after * 1e3 for r in c.rounds if r.ejected_after is not None]
        missed = len(c.rounds) - len(times)
        when = f"{quartiles(times, 1)} ms" if times else "never"
        if times and missed:
            when += f", {missed} rounds not ejected"
        rows.append([c.name, when, quartiles([r.failed for r in c.rounds]), ratio(c, baseline)])
    print(
        run.describe(
            f"{SERVERS} echo servers in child processes | {args.callers} callers | "
            f"{args.rounds} rounds per contender, one server failing every call for "
            f"{args.window:g} s"
        )
    )
    print("median (quartiles) over rounds")
    print()
    print(markdown_table(rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per contender")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers")
    parser.add_argument("--before", type=float, default=0.5, help="seconds before going bad")
    parser.add_argument("--window", type=float, default=2.0, help="seconds of failing")
    parser.add_argument("--interval", type=float, default=1.0, help="(c)'s interval, seconds")
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
