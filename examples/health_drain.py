"""Health-driven drain: a server that says NOT_SERVING stops getting calls, and none fails.

    python examples/health_drain.py --endpoints http://127.0.0.1:2379

Two greeter servers (``a`` and ``b``, in this process) serve ``/demo.Greeter/SayHello`` and the
standard ``grpc.health.v1.Health`` service (``grpcio-health-checking``'s asyncio servicer), and
register themselves in etcd. A client resolves the service with ``health_check=""``: the pool
keeps a ``Health/Watch`` stream on each server's connection and sends calls only to servers
that answer SERVING. Eight callers call without pause; after a while ``a`` calls
``enter_graceful_shutdown()`` on its health servicer (every status NOT_SERVING), as a server
about to stop does: the pool stops picking it while its calls in flight finish, and ``a`` stops
once no call is left on it. Its key is still registered all along: health, not the registry,
drained it. Exits 0 when no call failed and ``a`` got no new call once NOT_SERVING was seen.
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
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

import aiodiscovery

SERVICE = "demo.Greeter"
METHOD = f"/{SERVICE}/SayHello"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--endpoints",
        default=os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
        help="etcd URLs, comma-separated (default: $ETCD_ENDPOINTS or http://127.0.0.1:2379)",
    )
    parser.add_argument("--service", default="demo/health-drain", help="service name to use")
    parser.add_argument("--calls", type=int, default=300, help="calls before a drains")
    return parser.parse_args()


async def start_server(name: str) -> tuple[grpc.aio.Server, health_aio.HealthServicer, str]:
    async def say_hello(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0.01)
        return f"hello {request.decode()} from {name}".encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
            ),
        )
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, health, f"127.0.0.1:{port}"


async def run(args: argparse.Namespace) -> int:
    client = await aiodiscovery.connect(args.endpoints)
    server_a, health_a, address_a = await start_server("a")
    server_b, _, address_b = await start_server("b")
    replies: Counter[str] = Counter()
    failures: list[str] = []
    try:
        async with (
            aiodiscovery.Registrar(client, args.service, address_a, ttl=10),
            aiodiscovery.Registrar(client, args.service, address_b, ttl=10),
            await aiodiscovery.resolve(
                client, f"etcd:///{args.service}", health_check=""
            ) as channel,
        ):
            say_hello = channel.unary_unary(METHOD)
            stop = asyncio.Event()

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        reply = await say_hello(b"you", timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                    else:
                        replies[reply.decode().rsplit(" ", 1)[-1]] += 1

            async def until(condition: Any) -> None:
                # statistics() is a snapshot with no change notification: look again and again.
                while not condition():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

            async with asyncio.TaskGroup() as callers:
                for _ in range(8):
                    callers.create_task(caller())
                try:
                    await asyncio.wait_for(until(lambda: replies.total() >= args.calls), 30)
                    print(f"before: {dict(sorted(replies.items()))}", flush=True)
                    await health_a.enter_graceful_shutdown()

                    def a() -> aiodiscovery.SubchannelStatistics:
                        return channel.statistics().subchannels[address_a]

                    await until(lambda: a().health == "NOT_SERVING")
                    print("a: NOT_SERVING; the pool stops picking it", flush=True)
                    # Its calls in flight finish; then it can stop without cancelling any.
                    await until(lambda: a().in_flight == 0)
                    await server_a.stop(grace=5)
                    print("a: drained and stopped", flush=True)
                    drained = replies["a"]
                    goal = replies.total() + args.calls
                    await asyncio.wait_for(until(lambda: replies.total() >= goal), 30)
                finally:
                    stop.set()
    finally:
        await server_a.stop(None)
        await server_b.stop(None)
        await client.close()
    late = replies["a"] - drained
    print(f"after: {dict(sorted(replies.items()))}; calls to a after it drained: {late}")
    print(f"{len(failures)} calls failed" + (f": {failures[:3]}" if failures else ""))
    return 0 if not failures and not late else 1


def main() -> None:
    args = parse_args()
    try:
        code = asyncio.run(run(args))
    except (aiodiscovery.AiodiscoveryError, OSError) as exc:
        print(f"health_drain: error: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
