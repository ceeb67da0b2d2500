"""Echo servers for the issue-13 benchmarks: each in a process of its own, with the standard health
service and a switch that makes every call fail; plus the parent's side (start, kill, restart).

The child (``python benchmarks/_resilience_servers.py --etcd URL --target T --port P``) serves
``/bench.Echo/Unary`` (the request back, or the switched-on failure) and ``/bench.Echo/Fail``
(``b"UNAVAILABLE"`` turns failing on with that code, ``b""`` turns it off), registers
``<target>/127.0.0.1:<port>`` with a ``Registrar`` and prints ``PORT <n>``. It stops at end of
stdin (also when the parent dies) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import grpc
import grpc.aio
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from aiodiscovery import Registrar, connect

SERVICE = "bench.Echo"
ECHO = f"/{SERVICE}/Unary"
FAIL = f"/{SERVICE}/Fail"


# ---------------------------------------------------------------------------------------------
# The child


async def serve(args: argparse.Namespace) -> None:
    failing: list[grpc.StatusCode] = []

    async def echo(request: bytes, context: Any) -> bytes:
        if failing:
            await context.abort(failing[0], "failing on purpose")
        return request

    async def fail(request: bytes, context: Any) -> bytes:
        failing[:] = [grpc.StatusCode[request.decode()]] if request else []
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(echo),
                    "Fail": grpc.unary_unary_rpc_method_handler(fail),
                },
            ),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    await serve_registered(server, _bind(server, args.port), args.etcd, args.target, args.ttl)


async def serve_registered(
    server: grpc.aio.Server, port: int, etcd_url: str, target: str, ttl: int
) -> None:
    """Start ``server`` (bound to ``port``), register it and print ``PORT <n>``; serve until end
    of stdin (also when the parent dies) or SIGTERM/SIGINT, then stop it."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def read_until_eof() -> None:
        while os.read(0, 4096):
            pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_until_eof, daemon=True).start()
    client = await connect(etcd_url)
    try:
        async with Registrar(client, target, f"127.0.0.1:{port}", ttl=ttl):
            print(f"PORT {port}", flush=True)
            await stop.wait()
    finally:
        await server.stop(None)
        await client.close()


def _bind(server: grpc.aio.Server, port: int) -> int:
    # A restart reuses the port of the process it replaces, which may still be closing it.
    deadline = time.monotonic() + 10
    while True:
        try:
            return int(server.add_insecure_port(f"127.0.0.1:{port}"))
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# The parent


@dataclass
class Child:
    """One server process and its address."""

    process: subprocess.Popen[bytes]
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Servers:
    """The benchmark's server processes, registered under ``target`` in the etcd at ``etcd_url``."""

    def __init__(self, etcd_url: str, target: str, ttl: int = 10) -> None:
        self.etcd_url = etcd_url
        self.target = target
        self.ttl = ttl
        self.children: list[Child] = []

    def _spawn(self, port: int) -> Child:
        command = [
            sys.executable,
            __file__,
            "--etcd",
            self.etcd_url,
            "--target",
            self.target,
            "--port",
            str(port),
            "--ttl",
            str(self.ttl),
        ]
        return Child(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE))

    async def start(self, count: int) -> None:
        """Start ``count`` servers and wait until each is registered."""
        new = [self._spawn(0) for _ in range(count)]
        self.children += new
        for child in new:
            await _read_port(child)

    def kill(self, index: int) -> None:
        """SIGKILL server ``index`` and reap it (its key stays in etcd until its lease expires)."""
        process = self.children[index].process
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    async def restart(self, index: int) -> None:
        """Start server ``index`` again on its port; return once it is registered."""
        old = self.children[index]
        _close(old)
        child = self._spawn(old.port)
        self.children[index] = child
        await _read_port(child)

    def stop(self) -> None:
        """Stop every server: end of stdin lets each revoke its lease; then signals."""
        for child in self.children:
            with contextlib.suppress(OSError):
                if child.process.stdin is not None:
                    child.process.stdin.close()
        deadline = time.monotonic() + 5
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(max(0.0, deadline - time.monotonic()))
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait()
            _close(child)


async def _read_port(child: Child) -> None:
    stdout = child.process.stdout
    assert stdout is not None
    with anyio.fail_after(30):
        line = await anyio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
    if not line.startswith(b"PORT "):
        raise RuntimeError(f"a server failed to start (exit {child.process.poll()})")
    child.port = int(line.split()[1])


def _close(child: Child) -> None:
    for stream in (child.process.stdin, child.process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@contextlib.contextmanager
def servers(etcd_url: str, target: str, ttl: int = 10) -> Iterator[Servers]:
    """A :class:`Servers`, stopped on the way out (also on error or Ctrl-C)."""
    pool = Servers(etcd_url, target, ttl)
    try:
        yield pool
    finally:
        pool.stop()


async def set_failing(address: str, code: str) -> None:
    """Make the server at ``address`` fail every call with ``code`` (``""``: stop failing)."""
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        await channel.unary_unary(FAIL)(code.encode(), timeout=5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttl", type=int, default=10)
    anyio.run(serve, parser.parse_args(), backend="asyncio")
