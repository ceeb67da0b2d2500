"""A grpc.aio greeter server that registers itself in etcd for as long as it serves.

    python examples/greeter_server.py --endpoints http://127.0.0.1:2379 --name a

It serves ``/demo.Greeter/SayHello`` with a generic handler, so no protoc and no generated code
are needed: the request is a name as UTF-8 bytes, the reply ``hello <name> from <server>``. (With
``grpcio-tools`` generated stubs, register your servicer as usual; discovery does not change.)

While it serves, a :class:`aiodiscovery.Registrar` keeps the key ``<service>/<host:port>`` alive
under a lease. On Ctrl-C or SIGTERM (or after ``--duration`` seconds) it leaves in the right
order: deregister first (revoke the lease, so clients stop picking it), keep serving for
``--drain`` seconds, then stop the server with a grace period for calls still running. Clients drop
the endpoint when their etcd watch delivers the delete, typically within milliseconds; until then
they still send calls here, and the drain delay covers that moment (stopping at once would cancel
those calls).

An unreachable etcd is reported in one line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
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
        "--drain",
        type=float,
        default=1.0,
        help="seconds to keep serving after deregistering, while clients learn of it (default: 1)",
    )
    parser.add_argument(
        "--duration", type=float, help="stop by itself after this many seconds (for tests)"
    )
    return parser.parse_args()


async def serve(args: argparse.Namespace) -> None:
    async def say_hello(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return f"hello {request.decode()} from {args.name}".encode()

    # etcd first: if it is unreachable there is nothing to serve for.
    client = await aiodiscovery.connect(args.endpoints)
    server = grpc.aio.server()
    try:
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

        # String metadata ("name=a"): Go clients of the same service cannot read object metadata.
        endpoint = aiodiscovery.Endpoint.with_attributes(address, name=args.name)
        async with aiodiscovery.Registrar(client, args.service, endpoint, ttl=args.ttl) as reg:
            print(f"{args.name}: serving on {address}, registered as {reg.key}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        # The lease is revoked and the key gone, but a client picks us until its watch brings
        # the delete: keep serving meanwhile, then stop, letting calls already running finish.
        print(f"{args.name}: deregistered; draining for {args.drain:g} s", flush=True)
        await asyncio.sleep(args.drain)
        print(f"{args.name}: stopping", flush=True)
        await server.stop(grace=5)
        print(f"{args.name}: stopped", flush=True)
    finally:
        await client.close()
        await server.stop(None)


def main() -> None:
    args = parse_args()
    try:
        asyncio.run(serve(args))
    except (aiodiscovery.AiodiscoveryError, OSError) as exc:
        # etcd unreachable or refusing us: one line, not a traceback.
        print(f"greeter_server: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
