"""A server SIGKILLed under 32 callers: which calls fail, with and without a retry policy."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import grpc
import grpc.aio
import pytest

from aiodiscovery import BalancedChannel, Endpoint, EndpointManager, EtcdClient, resolve

from .helpers import until
from .processes import Process
from .servers import method
from .test_pool import ready

pytestmark = pytest.mark.anyio

CALLERS = 32
RETRY_ON_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "test.Echo"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@contextlib.contextmanager
def child_servers(count: int) -> Iterator[list[tuple[Process, str]]]:
    """Echo servers in processes of their own (killed on the way out), with their addresses."""
    with contextlib.ExitStack() as stack:
        children = []
        for i in range(count):
            process = stack.enter_context(
                Process([sys.executable, "-m", "tests.echo_child", "--name", f"s{i}"])
            )
            children.append(process)
        ports = [p.expect(r"^PORT (\d+)$").group(1) for p in children]
        yield [(p, f"127.0.0.1:{port}") for p, port in zip(children, ports, strict=True)]


@dataclass
class Record:
    """Each caller's calls: (start, end, reply or error)."""

    calls: list[tuple[float, float, bytes | grpc.aio.AioRpcError]] = field(default_factory=list)

    @property
    def replies(self) -> int:
        return sum(isinstance(r, bytes) for _, _, r in self.calls)

    def failures(self) -> list[tuple[float, grpc.aio.AioRpcError]]:
        return [(s, r) for s, _, r in self.calls if isinstance(r, grpc.aio.AioRpcError)]


@contextlib.asynccontextmanager
async def callers(channel: grpc.aio.Channel) -> AsyncIterator[Record]:
    record = Record()
    stop = anyio.Event()
    unary = channel.unary_unary(method("Unary"))

    async def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                reply: bytes | grpc.aio.AioRpcError = await unary(b"x", timeout=10)
            except grpc.aio.AioRpcError as exc:
                reply = exc
            record.calls.append((started, time.monotonic(), reply))

    async with anyio.create_task_group() as tg:
        for _ in range(CALLERS):
            tg.start_soon(caller)
        try:
            yield record
        finally:
            stop.set()


@dataclass
class Crash:
    """What happened around one SIGKILL: when, the victim's calls in flight then, and when the
    pool itself saw its connection leave READY (its log line's time, on the monotonic clock)."""

    record: Record
    killed: float
    in_flight: int
    noticed: float
    channel: BalancedChannel


async def kill_one_under_load(
    client: EtcdClient,
    service: str,
    options: list[tuple[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> Crash:
    """Three servers, 32 callers, SIGKILL one, under load."""
    em = EndpointManager(client, service)
    with child_servers(3) as children:
        for i, (_, address) in enumerate(children):
            # No lease: the dead server stays registered, as a crashed one does for its TTL.
            await em.add_endpoint(f"{service}/s{i}", Endpoint(address))
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 3)
            victim, address = children[1]
            async with callers(channel) as record:
                await until(lambda: record.replies > 600, timeout=30)
                # Nothing runs between these lines: no call can start between the count and the
                # kill, nor before the process is gone.
                in_flight = channel.statistics().subchannels[address].in_flight
                killed = time.monotonic()
                with caplog.at_level(logging.INFO, logger="aiodiscovery.pool"):
                    victim.signal(signal.SIGKILL)
                    victim.popen.wait(10)
                    lost = f"endpoint {address}: connection lost"
                    await until(lambda: any(lost in r.getMessage() for r in caplog.records))
                # Log records carry wall-clock times; the calls, monotonic ones.
                seen = next(r for r in caplog.records if lost in r.getMessage()).created
                noticed = seen - time.time() + time.monotonic()
                target = record.replies + 600
                await until(lambda: record.replies > target, timeout=30)
    return Crash(record, killed, in_flight, noticed, channel)


async def test_without_a_policy_only_the_calls_in_flight_on_it_fail(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    crash = await kill_one_under_load(client, service, [], caplog)
    failures = crash.record.failures()
    details = [(f.code(), f.details()) for _, f in failures]
    # Calls picked for it after it died and never sent went to another server.
    assert not [d for d in details if "failed to connect" in (d[1] or "")], details
    # Calls grpc wrote onto the dead connection before reading its end ("Socket closed") may
    # have reached a server as far as the client can tell: they fail, as on any channel. So
    # the failures are the calls in flight at the kill, and calls started after it only until
    # the pool saw the connection break: none later, and at most one per caller (a caller's
    # failed call is answered once grpc has read the connection's end).
    late = [started for started, _ in failures if started >= crash.killed]
    assert all(started < crash.noticed for started in late), details
    assert len(late) <= CALLERS, details
    assert len(failures) - len(late) <= crash.in_flight, (crash.in_flight, details)
    assert {code for code, _ in details} <= {grpc.StatusCode.UNAVAILABLE}, details
    assert crash.channel.statistics().retries == 0


async def test_with_a_retry_policy_no_call_fails(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = [("grpc.service_config", RETRY_ON_UNAVAILABLE)]
    crash = await kill_one_under_load(client, service, options, caplog)
    assert crash.record.failures() == []
    assert crash.in_flight > 0
    # Its calls in flight (those whose answer was not on its way already) went elsewhere.
    assert crash.channel.statistics().retries > 0
