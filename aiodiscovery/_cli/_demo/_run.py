"""The demo from start to end: etcd, a client, three servers, a balanced channel, traffic and
the script; everything it started is stopped again, also after Ctrl-C."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

import aiodiscovery

from .._output import safe, say
from ._options import DemoOptions
from ._script import run_script
from ._servers import Server, spawn
from ._traffic import Traffic
from ._verdict import check, summary

__all__ = ["run_demo"]


async def run_demo(options: DemoOptions) -> int:
    """Run the demo; return 0 if discovery behaved, 1 if not."""
    try:
        return await _run_demo(options)
    except anyio.get_cancelled_exc_class():
        say("interrupted: everything is stopped")
        raise


async def _run_demo(options: DemoOptions) -> int:
    from aiodiscovery.testing import EtcdServer  # noqa: PLC0415 - only the embedded etcd needs it

    async with contextlib.AsyncExitStack() as stack:
        if options.settings is None:
            say("starting an embedded etcd ...")
            etcd = await stack.enter_async_context(EtcdServer())
            urls, connect_kwargs = etcd.url, {}
            service = options.service or "demo/greeter"
        else:
            urls, connect_kwargs = options.settings.urls, options.settings.kwargs()
            service = options.service or f"demo/greeter-{secrets.token_hex(3)}"
        client = await aiodiscovery.connect(urls, **connect_kwargs)
        stack.push_async_callback(_shielded, client.close)
        prefix = aiodiscovery.parse_target(service)
        say(f"etcd at {urls}; service {service!r} (keys under {prefix})")

        config = {"urls": urls, "connect": connect_kwargs, "service": service, "ttl": options.ttl}
        servers: dict[str, Server] = {}

        async def close_servers() -> None:
            # All at once: each may take a while to stop, and close() never raises, so one
            # server's trouble does not leave the others running.
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as group:
                    for server in servers.values():
                        group.start_soon(server.close)

        stack.push_async_callback(close_servers)

        async def start(name: str) -> Server:
            server = await spawn(name, config)
            servers[name] = server
            say(f"  {name}: serving on {server.address}, registered as {server.key}")
            return server

        say("starting three greeter servers (child processes, each with a Registrar) ...")
        async with anyio.create_task_group() as group:
            for name in ("s1", "s2", "s3"):
                group.start_soon(start, name)

        channel = await aiodiscovery.resolve(client, f"etcd:///{service}")
        stack.push_async_callback(_shielded, channel.close)
        names = {s.address: s.name for s in servers.values()}
        traffic = Traffic(channel, names, "1. steady: three servers")
        # A channel starts IDLE, as grpc's do: connect now, so that the first phase is steady.
        channel.get_state(try_to_connect=True)
        for server in servers.values():
            await traffic.wait_picked(server.address, 10)
        say(
            f"client: resolve(client, 'etcd:///{service}'), {options.callers} callers at "
            f"{options.rate:g} calls/s each"
        )

        problems: list[str] = []
        async with anyio.create_task_group() as group:
            traffic.start()
            for index in range(options.callers):
                group.start_soon(traffic.caller, index, options.rate)
            group.start_soon(traffic.reporter, lambda: [n for n, s in servers.items() if s.running])
            try:
                await run_script(options, traffic, servers, start, problems)
            except (RuntimeError, TimeoutError) as exc:
                # A step failed (a server did not answer, a wait ran out): the demo failed, and
                # the summary of what ran so far still says how.
                problems.append(str(exc))
            else:
                problems.extend(check(traffic))
            group.cancel_scope.cancel()
        traffic.stop()

        summary(traffic, options.callers, options.rate)
        if problems:
            say("demo FAILED: " + safe("; ".join(problems)))
            return 1
        say("demo OK: no call failed except those sent to the crashed server")
        return 0
    raise AssertionError("unreachable")  # pragma: no cover - the stack never swallows


async def _shielded(close: Callable[[], Awaitable[Any]]) -> None:
    # Cleanup must finish even when Ctrl-C cancelled the demo.
    with anyio.CancelScope(shield=True):
        await close()
