"""How many calls fail when a server is SIGKILLed under load, with and without a retry policy.

Run it from the project root, in the project's virtual environment (it starts its own etcd and
three echo servers, each in a process of its own, on free loopback ports, and stops them all
afterwards)::

    python benchmarks/bench_crash.py                # about 2 minutes
    python benchmarks/bench_crash.py --crashes 2    # a quick smoke run

Progress goes to stderr; stdout gets a markdown table.

Each crash: ``--callers`` callers call one contender's channel back to back (unary echo, 5 s
deadline); after ``--before`` seconds one server (a different one each crash) is SIGKILLed and
reaped, the callers go on for ``--after`` seconds, then stop; the server is started again on its
port and re-registers (its old key stays in etcd until the restart, as a crashed server's does
for its TTL), and the next crash waits until every subchannel is READY again. Contenders, one
crash each in turn (order rotated and reversed from crash to crash):

a. baseline: the pool as it was before issue 13 (the benchmark turns the pool's retries off on
   this one channel by hand, leaving the subchannels' options as they were);
b. the default pool: calls that never left are sent once more to another READY endpoint;
c. a ``retryPolicy`` on UNAVAILABLE (3 attempts, backoff 0.01 s to 0.1 s) in the service config.

Per contender, the table gives the median over crashes (quartiles in brackets) of: failed calls;
those failed with grpc's "failed to connect to all addresses" (calls picked for the dead server
before the pool saw it leave READY, never sent); calls in flight on the server when it was killed;
retries and transparent retries made. The ratio is the median of the same-crash-number ratios of
failed calls to (a)'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import grpc
import grpc.aio
from _report import Run, quartiles
from _resilience_servers import ECHO, Servers, servers
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs
from bench_pool import log, turn_order, wait_all_ready

from aiodiscovery import BalancedChannel, connect, resolve
from aiodiscovery.testing import EtcdServer

TARGET = "bench/crash"
SERVERS = 3
NEVER_SENT = "failed to connect to all addresses"
RETRY_ON_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
# Marks the baseline: the pool's retries off, nothing else changed.
AS_BEFORE = "as before issue 13"
CONTENDERS: list[tuple[str, list[tuple[str, object]]]] = [
    (f"a. the pool {AS_BEFORE}", []),
    ("b. default pool (transparent retries)", []),
    ("c. retryPolicy on UNAVAILABLE", [("grpc.service_config", RETRY_ON_UNAVAILABLE)]),
]


@dataclass
class Crash:
    calls: int
    failed: int
    never_sent: int
    in_flight: int
    retries: int
    transparent: int


@dataclass
class Contender:
    name: str
    channel: BalancedChannel
    crashes: list[Crash] = field(default_factory=list)


async def one_crash(
    contender: Contender, fleet: Servers, victim: int, args: argparse.Namespace
) -> Crash:
    channel = contender.channel
    echo = channel.unary_unary(ECHO, _registered_method=True)
    before = channel.statistics()
    outcomes: list[grpc.aio.AioRpcError | None] = []
    stop = anyio.Event()

    async def caller() -> None:
        while not stop.is_set():
            try:
                await echo(b"x", timeout=5)
            except grpc.aio.AioRpcError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)

    address = fleet.children[victim].address
    async with anyio.create_task_group() as tg:
        for _ in range(args.callers):
            tg.start_soon(caller)
        await anyio.sleep(args.before)
        # No await between these: no call starts between the count and the kill.
        in_flight = channel.statistics().subchannels[address].in_flight
        fleet.kill(victim)
        await anyio.sleep(args.after)
        stop.set()
    after = channel.statistics()
    failures = [o for o in outcomes if o is not None]
    return Crash(
        calls=len(outcomes),
        failed=len(failures),
        never_sent=sum(NEVER_SENT in (f.details() or "") for f in failures),
        in_flight=in_flight,
        retries=after.retries - before.retries,
        transparent=after.transparent_retries - before.transparent_retries,
    )


@contextlib.asynccontextmanager
async def contenders_for(etcd_url: str) -> AsyncIterator[list[Contender]]:
    client = await connect(etcd_url)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.close)
        contenders = []
        for name, options in CONTENDERS:
            channel = await resolve(client, f"etcd:///{TARGET}", options=options)
            await stack.enter_async_context(channel)
            if AS_BEFORE in name:
                # Before its multi-callable is made: it then hands out grpc.aio's own calls.
                channel._pool.retry.enabled = False
            contenders.append(Contender(name, channel))
        yield contenders


def ratio(ours: Contender, baseline: Contender) -> str:
    """Failed calls against the baseline's, crash by crash (crashes where it lost none skipped)."""
    if ours is baseline:
        return "1.00x"
    ratios = [
        mine.failed / theirs.failed
        for mine, theirs in zip(ours.crashes, baseline.crashes, strict=True)
        if theirs.failed
    ]
    return quartiles(ratios, 2, "x") if ratios else "n/a"


async def main(args: argparse.Namespace) -> None:
    run = Run()
    async with EtcdServer() as etcd:
        with servers(etcd.url, TARGET, ttl=args.ttl) as fleet:
            await fleet.start(SERVERS)
            log(f"etcd at {etcd.url}; servers at {', '.join(c.address for c in fleet.children)}")
            async with contenders_for(etcd.url) as contenders:
                for crash_no in range(args.crashes):
                    for contender in turn_order(contenders, crash_no):
                        await wait_all_ready(contender.channel, SERVERS, timeout=30)
                        victim = crash_no % SERVERS
                        crash = await one_crash(contender, fleet, victim, args)
                        contender.crashes.append(crash)
                        log(
                            f"crash {crash_no + 1}/{args.crashes} {contender.name}: "
                            f"{crash.failed} of {crash.calls} calls failed "
                            f"({crash.never_sent} never sent), {crash.in_flight} in flight, "
                            f"{crash.retries} retries, {crash.transparent} transparent"
                        )
                        await fleet.restart(victim)
    baseline = contenders[0]
    rows = [
        [
            "contender",
            "failed calls per crash",
            "of which never sent",
            "in flight on the victim",
            "retries",
            "transparent retries",
            "failed vs a",
        ]
    ]
    for c in contenders:
        rows.append(
            [
                c.name,
                quartiles([k.failed for k in c.crashes]),
                quartiles([k.never_sent for k in c.crashes]),
                quartiles([k.in_flight for k in c.crashes]),
                quartiles([k.retries for k in c.crashes]),
                quartiles([k.transparent for k in c.crashes]),
                ratio(c, baseline),
            ]
        )
    print(
        run.describe(
            f"{SERVERS} echo servers in child processes | {args.callers} callers | "
            f"{args.crashes} crashes per contender, SIGKILL after {args.before:g} s, "
            f"{args.after:g} s more"
        )
    )
    print("per crash: median (quartiles) over crashes")
    print()
    print(markdown_table(rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--crashes", type=int, default=10, help="crashes per contender")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers")
    parser.add_argument("--before", type=float, default=0.5, help="seconds of calls before")
    parser.add_argument("--after", type=float, default=1.0, help="seconds of calls after")
    parser.add_argument("--ttl", type=int, default=10, help="the servers' lease TTL")
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
