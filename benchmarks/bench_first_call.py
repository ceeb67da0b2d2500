"""What a channel's IDLE start costs the first call, and what ``eager=True`` buys back.

Run it from the project root, in the project's virtual environment (it starts its own etcd and
three echo servers in this process, on free loopback ports, and stops them afterwards)::

    python benchmarks/bench_first_call.py              # about 20 seconds
    python benchmarks/bench_first_call.py --rounds 5   # a quick smoke run

Progress goes to stderr; stdout gets a markdown table.

Each round, each contender in turn (order rotated from round to round) opens a fresh channel
over the same three servers, makes one unary call, and closes the channel:

a. baseline: grpc.aio's own round_robin channel over ``ipv4:a,b,c`` (IDLE until the call);
b. ``resolve()`` (IDLE until the call, as grpc);
c. ``resolve(eager=True)``, the call made as soon as ``resolve()`` returns;
d. ``resolve(eager=True)``, the call made once ``channel_ready()`` returned.

The table gives the median (quartiles in brackets) of the first call's time (from the call to
its reply) and of the time from opening the channel (``resolve()`` or the native constructor)
to that reply; the ratio is the median of the same-round ratios of the first call's time to (a)'s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import grpc
import grpc.aio
from _report import Run, quartiles
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs

from aiodiscovery import Endpoint, EndpointManager, EtcdClient, connect, resolve
from aiodiscovery.testing import EtcdServer

TARGET = "bench/first-call"
METHOD = "/bench.Echo/Unary"

# (opening time, first call time), both in seconds.
Sample = tuple[float, float]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def echo_servers(count: int) -> list[tuple[grpc.aio.Server, str]]:
    """``count`` echo servers (not started yet) and their addresses."""
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    servers = []
    for _ in range(count):
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Unary": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        servers.append((server, f"127.0.0.1:{port}"))
    return servers


async def first_call(channel: grpc.aio.Channel) -> float:
    started = time.perf_counter()
    reply = await channel.unary_unary(METHOD)(b"x", timeout=10)
    assert reply == b"x"
    return time.perf_counter() - started


def contenders(
    client: EtcdClient, addresses: list[str]
) -> dict[str, Callable[[], Awaitable[Sample]]]:
    async def native() -> Sample:
        opened = time.perf_counter()
        channel = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(addresses), options=[("grpc.lb_policy_name", "round_robin")]
        )
        async with channel:
            took = await first_call(channel)
            total = time.perf_counter() - opened
        return total, took

    async def ours(eager: bool, ready: bool) -> Sample:
        opened = time.perf_counter()
        async with await resolve(client, TARGET, eager=eager) as channel:
            if ready:
                await channel.channel_ready()
            took = await first_call(channel)
            total = time.perf_counter() - opened
        return total, took

    async def lazy() -> Sample:
        return await ours(eager=False, ready=False)

    async def eager() -> Sample:
        return await ours(eager=True, ready=False)

    async def eager_ready() -> Sample:
        return await ours(eager=True, ready=True)

    return {
        "a. grpc.aio native round_robin (baseline)": native,
        "b. resolve() (IDLE until the call)": lazy,
        "c. resolve(eager=True), call at once": eager,
        "d. resolve(eager=True), call after channel_ready()": eager_ready,
    }


async def main(args: argparse.Namespace) -> None:
    run = Run()
    async with EtcdServer() as etcd:
        client = await connect(etcd.url)
        servers = echo_servers(3)
        try:
            em = EndpointManager(client, TARGET)
            addresses = [address for _, address in servers]
            for i, (server, address) in enumerate(servers):
                await server.start()
                await em.add_endpoint(f"{TARGET}/s{i}", Endpoint(address))
            runners = contenders(client, addresses)
            names = list(runners)
            samples: dict[str, list[Sample]] = {name: [] for name in names}
            for round_no in range(args.rounds):
                order = names[round_no % len(names) :] + names[: round_no % len(names)]
                for name in order:
                    samples[name].append(await runners[name]())
                log(f"round {round_no + 1}/{args.rounds} done")
        finally:
            for server, _ in servers:
                await server.stop(None)
            await client.close()
    baseline = [took for _, took in samples[names[0]]]
    rows = [["contender", "first call", "open to reply", "first call vs (a)"]]
    for name in names:
        took = [t for _, t in samples[name]]
        total = [o for o, _ in samples[name]]
        ratios = [t / b for t, b in zip(took, baseline, strict=True)]
        rows.append(
            [
                name,
                quartiles([1000 * t for t in took], 2, " ms"),
                quartiles([1000 * t for t in total], 2, " ms"),
                "baseline" if name == names[0] else f"{statistics.median(ratios):.2f}x",
            ]
        )
    print(run.describe(f"{args.rounds} rounds, 3 in-process servers, loopback"))
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds per contender")
    anyio.run(main, parser.parse_args())
