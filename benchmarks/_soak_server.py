"""One gRPC server of the soak, in a process of its own, registered with a ``Registrar``.

    python benchmarks/_soak_server.py --urls URLS --service soak/echo --name s1 --port 4711 ...

It serves ``/soak.Echo/Call``: after a little random work it answers ``<name>#<incarnation>``, so
the client can tell which process answered. It binds the given port (a restart reuses it),
registers ``<service>/127.0.0.1:<port>`` with the endpoint metadata ``<name>`` and the given TTL,
and reports ``serving``, ``registered``, every ``lost`` and ``reregistered`` of its Registrar, then
on SIGTERM (or end of stdin) ``deregistered`` once it left the Registrar block, keeps serving for
``--drain`` seconds while clients learn of it, stops with a grace period and reports ``stopped``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import anyio
import grpc
import grpc.aio
from _soak_child import emit, etcd_credentials, run_child, stop_on_eof_or_signal

from aiodiscovery import Endpoint, Registrar, connect

SERVICE = "soak.Echo"
METHOD = f"/{SERVICE}/Call"
_BIND_TIMEOUT = 10.0
_STOP_GRACE = 5.0


def bind(server: grpc.aio.Server, port: int) -> int:
    """Bind ``127.0.0.1:port``, retrying for a while: the previous incarnation may still be
    closing it."""
    deadline = time.monotonic() + _BIND_TIMEOUT
    delay = 0.05
    while True:
        try:
            return int(server.add_insecure_port(f"127.0.0.1:{port}"))
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


async def report_losses(registrar: Registrar) -> None:
    """Tell the soak every time the Registrar loses its registration and gets it back."""
    while True:
        await registrar.wait_lost()
        emit("lost", reason=registrar.statistics().last_loss_reason)
        await registrar.wait_registered()
        emit("reregistered", lease=registrar.lease_id)


async def serve(args: argparse.Namespace) -> None:
    """Serve, registered, until SIGTERM or end of input; then deregister, drain, stop."""
    stop = asyncio.Event()
    stop_on_eof_or_signal(stop)
    tag = f"{args.name}#{args.incarnation}".encode()
    work = args.work_ms / 1000

    async def call(request: bytes, context: Any) -> bytes:
        # A little work, so that some calls are in flight whenever the server dies or leaves.
        await asyncio.sleep(random.uniform(0, 2 * work))
        return tag

    # No SO_REUSEPORT: a port someone else holds must fail the bind, not be shared.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    port = bind(server, args.port)
    await server.start()
    address = f"127.0.0.1:{port}"
    emit("serving", address=address)
    client = await connect(args.urls, **etcd_credentials())
    try:
        endpoint = Endpoint(address, args.name)
        async with Registrar(client, args.service, endpoint, ttl=args.ttl) as registrar:
            emit("registered", key=registrar.key, lease=registrar.lease_id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(report_losses, registrar)
                await stop.wait()
                tg.cancel_scope.cancel()
            statistics = registrar.statistics()
        emit(
            "deregistered",
            losses=statistics.losses,
            registrations=statistics.registrations,
            last_loss_reason=statistics.last_loss_reason,
        )
        # Clients pick us until their watch brings the delete: keep serving meanwhile.
        await anyio.sleep(args.drain)
        await server.stop(grace=_STOP_GRACE)
        emit("stopped")
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
            await server.stop(None)


def main() -> None:
    """The server's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--urls", required=True, help="etcd client URLs, comma-separated")
    parser.add_argument("--service", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--incarnation", type=int, default=1)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--drain", type=float, default=1.0)
    parser.add_argument("--work-ms", type=float, default=4.0, help="mean work per call")
    run_child(parser, serve)


if __name__ == "__main__":
    main()
