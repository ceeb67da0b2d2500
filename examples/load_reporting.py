"""Load-aware balancing: servers report their load (ORCA), the client weighs them by it.

    python examples/load_reporting.py --endpoints http://127.0.0.1:2379

Two greeter servers (``fast`` and ``slow``, in this process) serve ``/demo.Greeter/SayHello``
with four workers each; a call takes 10 ms on ``fast`` and 30 ms on ``slow``. Each has a
``LoadReporter`` (its ``application_utilization`` is the share of its four workers in use)
and registers itself in etcd. A client resolves the service with ``weighted_round_robin``: the
pool follows each server's ORCA report stream and weighs the servers by
``qps / utilization``. Eight callers call without pause; the example prints the weights the
policy settled on and the share of calls each server took in the second half. Exits 0 when
``fast`` took the larger share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from typing import Any

import grpc
import grpc.aio

import aiodiscovery

SERVICE = "demo.Greeter"
METHOD = f"/{SERVICE}/SayHello"
WORKERS = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--endpoints",
        default=os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
        help="etcd URLs, comma-separated (default: $ETCD_ENDPOINTS or http://127.0.0.1:2379)",
    )
    parser.add_argument("--service", default="demo/load-reporting", help="service name to use")
    parser.add_argument("--calls", type=int, default=1200, help="calls to make in all")
    return parser.parse_args()


async def start_server(name: str, seconds: float) -> tuple[grpc.aio.Server, str]:
    workers = asyncio.Semaphore(WORKERS)

    async def say_hello(request: bytes, context: Any) -> bytes:
        async with workers:
            await asyncio.sleep(seconds)
        return f"hello {request.decode()} from {name}".encode()

    # Reports every half second at most: the default minimum, 30 s, suits a fleet, not a demo.
    load = aiodiscovery.LoadReporter(capacity=WORKERS, window=0.5, min_report_interval=0.5)
    server = grpc.aio.server(interceptors=[load.interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
            ),
        )
    )
    load.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def main(args: argparse.Namespace) -> int:
    client = await aiodiscovery.connect(args.endpoints)
    servers = {name: await start_server(name, t) for name, t in (("fast", 0.01), ("slow", 0.03))}
    names = {address: name for name, (_, address) in servers.items()}
    policy = aiodiscovery.WeightedRoundRobin(
        oob_reporting_period=0.5, blackout_period=1.0, weight_update_period=0.5
    )
    served: Counter[str] = Counter()
    try:
        async with (
            aiodiscovery.Registrar(client, args.service, servers["fast"][1], ttl=5),
            aiodiscovery.Registrar(client, args.service, servers["slow"][1], ttl=5),
        ):
            channel = await aiodiscovery.resolve(client, args.service, policy=policy)
            async with channel:
                say_hello = channel.unary_unary(METHOD)
                made = 0

                async def caller() -> None:
                    nonlocal made
                    while made < args.calls:
                        made += 1
                        second_half = made > args.calls // 2
                        reply = await say_hello(b"you", timeout=10)
                        if second_half:
                            served[reply.decode().rsplit(" ", 1)[1]] += 1

                await asyncio.gather(*(caller() for _ in range(8)))
                weights = {
                    names[address]: sub.weight
                    for address, sub in channel.statistics().subchannels.items()
                }
    finally:
        for server, _ in servers.values():
            await server.stop(None)
        await client.close()
    print("weights:", ", ".join(f"{n}={w:.0f}" for n, w in sorted(weights.items()) if w))
    total = sum(served.values())
    print(
        "second half:", ", ".join(f"{n} {100 * c / total:.0f}%" for n, c in sorted(served.items()))
    )
    return 0 if served["fast"] > served["slow"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
