"""Servers for bench_balance.py: each in a process of its own, with a finite capacity (``--slots``
calls served at once, the others queue) and a service time the parent sets at run time; with
``--report``, an ORCA :class:`~aiodiscovery.LoadReporter` (per-call trailer and out-of-band stream,
``application_utilization`` from the share of the slots in use).

The child (``python benchmarks/_balance_servers.py --etcd URL --target T [--slots N] [--report]``)
serves ``/bench.Load/Unary`` (waits for a slot, sleeps the service time, answers the request) and
``/bench.Load/Set`` (the new service time in seconds, as text), registers itself with a
``Registrar`` and prints ``PORT <n>``; it stops at end of stdin or on SIGTERM. Sleeping stands for
work that waits (a database, a disk): the servers cost the shared machine little CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from typing import Any

import anyio
import grpc
import grpc.aio
from _resilience_servers import Child, Servers, serve_registered

from aiodiscovery import LoadReporter

SERVICE = "bench.Load"
UNARY = f"/{SERVICE}/Unary"
SET = f"/{SERVICE}/Set"


async def serve(args: argparse.Namespace) -> None:
    service_time = [0.0]
    slots = asyncio.Semaphore(args.slots) if args.slots else None

    async def unary(request: bytes, context: Any) -> bytes:
        if slots is None:
            if service_time[0]:
                await asyncio.sleep(service_time[0])
            return request
        async with slots:
            await asyncio.sleep(service_time[0])
        return request

    async def set_time(request: bytes, context: Any) -> bytes:
        service_time[0] = float(request)
        return b""

    reporter = (
        # Without slots, the utilization is the CPU's: these servers only spend CPU.
        LoadReporter(capacity=args.slots or None, window=0.5, min_report_interval=0.2)
        if args.report
        else None
    )
    interceptors = [] if reporter is None else [reporter.interceptor]
    server = grpc.aio.server(interceptors=interceptors)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Set": grpc.unary_unary_rpc_method_handler(set_time),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if reporter is not None:
        reporter.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await serve_registered(server, port, args.etcd, args.target, ttl=10)


class LoadServers(Servers):
    """The parent's side: :class:`Servers` spawning this module's servers."""

    def __init__(self, etcd_url: str, target: str, slots: int, report: bool) -> None:
        super().__init__(etcd_url, target)
        self.extra = ["--slots", str(slots), *(["--report"] if report else [])]

    def _spawn(self, port: int) -> Child:
        command = [sys.executable, __file__, "--etcd", self.etcd_url, "--target", self.target]
        return Child(
            subprocess.Popen([*command, *self.extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        )


async def set_service_time(address: str, seconds: float) -> None:
    """Make each call to the server at ``address`` take ``seconds`` once it has a slot."""
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        await channel.unary_unary(SET)(str(seconds).encode(), timeout=5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--slots", type=int, default=0)
    parser.add_argument("--report", action="store_true")
    anyio.run(serve, parser.parse_args(), backend="asyncio")
