"""grpc core balancing over the registry through xDS, against the Python pool and native grpc.

Run it from the project root, in the project's virtual environment with the ``xds`` extra (it
starts its own etcd 3.5 and three echo servers in processes of their own, on loopback ports, and
stops them all afterwards)::

    python benchmarks/bench_xds.py                          # about 1.5 minutes on 2 cores
    python benchmarks/bench_xds.py --seconds 1 --rounds 2   # a quick smoke run
    python benchmarks/bench_xds.py --skip-pool --rounds 40  # xDS against the baseline only

The echo servers, the measuring loop and the round order are ``bench_pool.py``'s (read its
docstring): ``--concurrency`` callers each send a request, await the reply and go again; every
contender runs ``--rounds`` short rounds in a rotating order; the table gives medians over
rounds and each ratio is the median (with quartiles) of same-round ratios to the baseline.
Contenders, all over the same three servers:

a. ``await resolve(client, "etcd:///bench/echo", engine="xds")``: grpc's own channel on
   ``xds:///bench/echo``, balanced by grpc core (round_robin) from the in-process control plane;
b. ``BalancedChannel`` (``resolve()`` with the default engine), round_robin;
c. baseline: one ``grpc.aio.insecure_channel`` to ``ipv4:<the three addresses>`` with
   ``grpc.lb_policy_name=round_robin``: grpc core over a fixed list, no discovery at all.

Client CPU per call is this process's ``time.process_time()`` over the window divided by the calls
completed; for (a) it includes the in-process xDS server, idle while nothing changes.

The second table is put-to-used propagation: ``--changes`` times, a fourth server (in this
process) is registered with one etcd put, and the clock runs until (Watcher) a ``Watcher`` on the
prefix has it in its snapshot, or (channels) a call on the channel, sent back to back, is answered
by it; then it is deleted and the next trial waits until the channel stops using it. The Watcher
is the baseline: what any consumer of the registry sees first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from typing import Any

import anyio
import grpc
import grpc.aio
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs
from bench_pool import (
    ECHO,
    SERVERS,
    TARGET,
    Contender,
    cpu_per_call,
    latency_p50,
    log,
    measure,
    median_of,
    ms,
    paired_ratio,
    read_ports,
    spawn_servers,
    throughput,
    turn_order,
    us,
    wait_all_ready,
)

from aiodiscovery import (
    BalancedChannel,
    Endpoint,
    EndpointManager,
    EtcdClient,
    Watcher,
    connect,
    local_xds_server,
    resolve,
)
from aiodiscovery.testing import EtcdServer

NEWCOMER = b"newcomer"


@contextlib.asynccontextmanager
async def newcomer_server() -> AsyncIterator[str]:
    """A fourth echo server, in this process, that answers with a tag of its own."""

    async def echo(request: bytes, context: Any) -> bytes:
        return NEWCOMER

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        ECHO.split("/")[1], {"Unary": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def until_used(echo: Callable[[bytes], Awaitable[Any]], used: bool) -> None:
    # Back to back: the first reply from the newcomer (or, when leaving, twenty without it:
    # round robin over four would have reached it within four) ends the wait.
    with anyio.fail_after(30):
        quiet = 0
        while True:
            hit = await echo(b"x") == NEWCOMER
            if used and hit:
                return
            quiet = 0 if hit else quiet + 1
            if not used and quiet >= 20:
                return


async def propagation(
    client: EtcdClient, channels: dict[str, grpc.aio.Channel], changes: int
) -> dict[str, list[float]]:
    manager = EndpointManager(client, TARGET)
    samples: dict[str, list[float]] = {"Watcher (baseline)": [], **{n: [] for n in channels}}
    async with newcomer_server() as address, Watcher(client, TARGET) as watcher:
        key = f"{TARGET}/newcomer"
        for trial in range(changes):
            for name in turn_order(list(samples), trial):
                started = time.perf_counter()
                await manager.add_endpoint(key, Endpoint(address))
                if name in channels:
                    echo = channels[name].unary_unary(ECHO)
                    await until_used(echo, used=True)
                else:
                    with anyio.fail_after(30):
                        while key not in watcher.snapshot:
                            await watcher.wait_for_change()
                samples[name].append(time.perf_counter() - started)
                await manager.delete_endpoint(key)
                if name in channels:
                    await until_used(channels[name].unary_unary(ECHO), used=False)
                else:
                    with anyio.fail_after(30):
                        while key in watcher.snapshot:
                            await watcher.wait_for_change()
    return samples


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    payload = bytes(i & 255 for i in range(args.payload))
    async with EtcdServer() as etcd:
        log(f"etcd at {etcd.url}; starting {SERVERS} echo servers")
        with spawn_servers(etcd.url, SERVERS) as children:
            await read_ports(children, timeout=60)
            addresses = [child.address for child in children]
            client = await connect(etcd.url)
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(client.close)
                xds = await resolve(client, f"etcd:///{TARGET}", engine="xds")
                stack.push_async_callback(local_xds_server_closed)
                await stack.enter_async_context(xds)
                pool = await resolve(client, f"etcd:///{TARGET}")
                assert isinstance(pool, BalancedChannel)
                await stack.enter_async_context(pool)
                await wait_all_ready(pool, len(addresses))
                native = grpc.aio.insecure_channel(
                    "ipv4:" + ",".join(addresses), options=[("grpc.lb_policy_name", "round_robin")]
                )
                await stack.enter_async_context(native)
                channels = {
                    "xDS channel (grpc core round_robin)": xds,
                    "BalancedChannel round_robin": pool,
                    "baseline: native round_robin over ipv4:a,b,c": native,
                }
                if args.skip_pool:
                    del channels["BalancedChannel round_robin"]
                contenders = [
                    Contender(name, ch.unary_unary(ECHO, _registered_method=True), ch)
                    for name, ch in channels.items()
                ]
                for contender in contenders:
                    await contender.channel.channel_ready()
                    # Every server reached before measuring: round robin needs them all READY.
                    for _ in range(3 * len(addresses)):
                        assert await contender.echo(b"ping") == b"ping", contender.name
                for round_no in range(args.rounds):
                    for contender in turn_order(contenders, round_no):
                        result = await measure(
                            contender.echo, payload, args.concurrency, args.warmup, args.seconds
                        )
                        contender.rounds.append(result)
                        log(
                            f"round {round_no + 1}/{args.rounds} {contender.name}: "
                            f"{result.throughput:,.0f} calls/s, "
                            f"CPU {us(result.cpu_per_call)}/call"
                        )
                log(f"propagation: {args.changes} puts per contender")
                del channels["baseline: native round_robin over ipv4:a,b,c"]
                spread = await propagation(client, channels, args.changes)
    elapsed = time.perf_counter() - started
    native_c = contenders[-1]
    rows = [["contender", "calls/s", "p50", "client CPU/call", "calls/s ratio", "CPU/call ratio"]]
    for c in contenders:
        rows.append(
            [
                c.name,
                f"{median_of(c, throughput):,.0f}",
                ms(median_of(c, latency_p50)),
                us(median_of(c, cpu_per_call)),
                paired_ratio(c, native_c, throughput),
                paired_ratio(c, native_c, cpu_per_call),
            ]
        )
    watcher = statistics.median(spread["Watcher (baseline)"])
    prop_rows = [["put to used", "median", "p90", "max", "median vs Watcher"]]
    for name, samples in spread.items():
        p90 = statistics.quantiles(samples, n=10, method="inclusive")[8]
        median = statistics.median(samples)
        prop_rows.append([name, ms(median), ms(p90), ms(max(samples)), f"{median / watcher:.2f}x"])
    print(
        f"Python {platform.python_version()} | grpcio {version('grpcio')} | "
        f"xds-protos {version('xds-protos')} | {os.cpu_count()} CPUs | {SERVERS} echo servers "
        f"in child processes | {args.concurrency} concurrent callers, {args.payload}-byte "
        f"payload | median of {args.rounds} rounds of {args.seconds:g} s (+{args.warmup:g} s "
        f"warm-up) | {args.changes} puts per contender | run took {elapsed:.0f} s | load average "
        f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    print(
        "ratios: median (and quartiles) of the same-round ratios to the baseline; calls/s above "
        "1 is better, CPU/call below 1 is better. CPU is this client process's only."
    )
    print()
    print(markdown_table(rows))
    print()
    print(markdown_table(prop_rows))


async def local_xds_server_closed() -> None:
    await (await local_xds_server()).close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per contender")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument("--payload", type=int, default=16, help="request size in bytes")
    parser.add_argument("--changes", type=int, default=20, help="puts timed per contender")
    parser.add_argument(
        "--skip-pool",
        action="store_true",
        help="measure only the xDS channel against the baseline (more rounds in the same time)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
