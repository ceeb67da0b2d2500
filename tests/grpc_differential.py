"""Run one scenario through grpcio's own C core and through ``resolve()``, and compare.

gRPC's core implements retries (gRFC A6) and client-side health checking (A17); the pool
re-implements them across endpoints. Each differential test sends the same calls to the same
real servers twice: on a native ``grpc.aio`` channel with ``grpc.enable_retries`` and the
service config, and on ``resolve()`` with the same service config over the same servers
registered in etcd. It then compares what the servers saw (attempts per call, their headers,
when they arrived) and what the caller got (status, details, metadata, replies).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import grpc
import grpc.aio

from aiodiscovery import EtcdClient, resolve

from .faulty_servers import Attempt, FaultyServer, registered
from .helpers import until
from .servers import method

# A channel's call under test: returns what the caller got.
Scenario = Callable[[grpc.aio.Channel], Awaitable["Outcome"]]


@dataclass(frozen=True)
class Outcome:
    """What the caller of one call got."""

    code: grpc.StatusCode
    details: str | None = None
    initial_metadata: tuple[tuple[str, str | bytes], ...] = ()
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
    replies: tuple[bytes, ...] = ()


@dataclass
class Observed:
    """One side's run: per call, what the caller got and the attempts the servers saw."""

    outcomes: list[Outcome] = field(default_factory=list)
    attempts: list[list[Attempt]] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        """Attempts per call."""
        return [len(call) for call in self.attempts]

    @property
    def codes(self) -> list[grpc.StatusCode]:
        """Each call's status code."""
        return [outcome.code for outcome in self.outcomes]

    @property
    def previous_attempts(self) -> list[list[str | None]]:
        """Per call, each attempt's ``grpc-previous-rpc-attempts`` header."""
        return [[a.previous_attempts for a in call] for call in self.attempts]

    def gaps(self, retry: int) -> list[float]:
        """The delays before retry number ``retry`` (1 = the second attempt) of every call."""
        return [call[retry].at - call[retry - 1].at for call in self.attempts if len(call) > retry]


def service_config(*method_configs: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A service config document with these method configs and top-level fields."""
    return {"methodConfig": list(method_configs), **top}


def native_channel(
    servers: Sequence[FaultyServer], config: dict[str, Any] | None, *extra: tuple[str, Any]
) -> grpc.aio.Channel:
    """grpcio's own channel to ``servers`` (``ipv4:`` with every address), retries on."""
    # A local subchannel pool, as the pool's subchannels have: nothing left by another test
    # (a subchannel in backoff to a port reused since) is shared.
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.use_local_subchannel_pool", 1),
        *extra,
    ]
    if config is not None:
        options.append(("grpc.service_config", json.dumps(config)))
    target = "ipv4:" + ",".join(server.address for server in servers)
    return grpc.aio.insecure_channel(target, options=options)


@contextlib.asynccontextmanager
async def both_channels(
    client: EtcdClient,
    service: str,
    servers: Sequence[FaultyServer],
    config: dict[str, Any] | None,
    **resolve_kwargs: Any,
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    """(grpc core's channel, the pool's channel), both ready over ``servers``."""
    options = [] if config is None else [("grpc.service_config", json.dumps(config))]
    async with registered(client, service, servers):
        native = native_channel(servers, config)
        async with (
            native,
            await resolve(client, service, options=options, **resolve_kwargs) as ours,
        ):
            with anyio.fail_after(10):
                await native.channel_ready()
            await until(lambda: len(ours.statistics().subchannels) == len(servers))
            yield native, ours


async def run(
    channel: grpc.aio.Channel, servers: Sequence[FaultyServer], scenario: Scenario, calls: int
) -> Observed:
    """Make ``calls`` calls of ``scenario`` one after the other, noting what the servers saw."""
    observed = Observed()
    for _ in range(calls):
        marks = [len(server.attempts) for server in servers]
        observed.outcomes.append(await scenario(channel))
        seen = [a for s, m in zip(servers, marks, strict=True) for a in s.attempts[m:]]
        observed.attempts.append(sorted(seen, key=lambda a: a.at))
    return observed


async def compare(
    client: EtcdClient,
    service: str,
    servers: Sequence[FaultyServer],
    config: dict[str, Any] | None,
    scenario: Scenario,
    calls: int = 1,
    **resolve_kwargs: Any,
) -> tuple[Observed, Observed]:
    """Run ``scenario`` on grpc core's channel, then on the pool's: (core, pool)."""
    async with both_channels(client, service, servers, config, **resolve_kwargs) as (native, ours):
        core = await run(native, servers, scenario, calls)
        pool = await run(ours, servers, scenario, calls)
    return core, pool


async def unary(channel: grpc.aio.Channel, **kwargs: Any) -> Outcome:
    """A ``Unary`` call's outcome."""
    call = channel.unary_unary(method("Unary"))(b"x", **kwargs)
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return _failed(error, ())
    return await _finished(call, (reply,))


async def stream(channel: grpc.aio.Channel, count: int = 3) -> Outcome:
    """A ``Count`` call's outcome, every message read."""
    call = channel.unary_stream(method("Count"))(str(count).encode())
    replies: list[bytes] = []
    try:
        async for reply in call:
            replies.append(reply)
    except grpc.aio.AioRpcError as error:
        return _failed(error, tuple(replies))
    return await _finished(call, tuple(replies))


def _failed(error: grpc.aio.AioRpcError, replies: tuple[bytes, ...]) -> Outcome:
    return Outcome(
        error.code(),
        error.details(),
        tuple(error.initial_metadata() or ()),
        tuple(error.trailing_metadata() or ()),
        replies,
    )


async def _finished(call: Any, replies: tuple[bytes, ...]) -> Outcome:
    return Outcome(
        await call.code(),
        await call.details(),
        tuple(await call.initial_metadata() or ()),
        tuple(await call.trailing_metadata() or ()),
        replies,
    )


def quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """The 10th, 50th and 90th percentiles of ``values``."""
    deciles = statistics.quantiles(values, n=10)
    return deciles[0], statistics.median(values), deciles[-1]


def without_server_names(outcome: Outcome) -> Outcome:
    """``outcome`` with the replying server's name taken out of replies and details."""
    replies = tuple(reply.split(b":", 1)[-1] for reply in outcome.replies)
    details = outcome.details
    if details is not None and ": failing on purpose" in details:
        details = "failing on purpose"
    return Outcome(
        outcome.code, details, outcome.initial_metadata, outcome.trailing_metadata, replies
    )
