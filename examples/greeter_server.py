"""A grpc.aio greeter server that registers itself in etcd for as long as it serves.

    python examples/greeter_server.py --endpoints http://127.0.0.1:2379 --name a

It serves ``/demo.Greeter/SayHello`` with a generic handler, so no protoc and no generated code
are needed: the request is a name as UTF-8 bytes, the reply ``hello <name> from <server>``. (With
``grpcio-tools`` generated stubs, register your servicer as usual; discovery does not change.)

While it serves, a :class:`aiodiscovery.Registrar` keeps the key ``<service>/<host:port>`` alive
under a lease. On Ctrl-C or SIGTERM (or after ``--duration`` seconds) it leaves in the right
order: deregister first (revoke the lease, so clients stop picking it), give clients a moment to
drain, then stop the server with a grace period for calls still running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from typing import Any

import grpc
import grpc.aio

import aiodiscovery

SERVICE = "demo.Greeter"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--endpoints",
        default=os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
        help="etcd URLs, comma-separated (default: $ETCD_ENDPOINTS or http://127.0.0.1:2379)",
    )
    parser.add_argument("--service", default="demo/greeter", help="service name to register under")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on and register")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--name", default=socket.gethostname(), help="name put in the replies")
    parser.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds")
    parser.add_argument(
        "--duration", type=float, help="stop by itself after this many seconds (for tests)"
    )
    return parser.parse_args()


async def serve(args: argparse.Namespace) -> None:
    async def say_hello(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return f"hello {request.decode()} from {args.name}".encode()

    server = grpc.aio.server()
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
    )
    server.add_generic_rpc_handlers((handler,))
    await server.start()
    address = f"{args.host}:{port}"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    client = await aiodiscovery.connect(args.endpoints)
    try:
        endpoint = aiodiscovery.Endpoint(address, {"name": args.name})
        async with aiodiscovery.Registrar(client, args.service, endpoint, ttl=args.ttl) as reg:
            print(f"{args.name}: serving on {address}, registered as {reg.key}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        # The lease is revoked: resolvers drop us now. Calls they already sent still finish.
        print(f"{args.name}: deregistered; stopping", flush=True)
        await server.stop(grace=5)
        print(f"{args.name}: stopped", flush=True)
    finally:
        await client.close()
        await server.stop(None)


def main() -> None:
    asyncio.run(serve(parse_args()))


if __name__ == "__main__":
    main()
