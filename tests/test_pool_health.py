"""resolve(health_check=...): a Health/Watch stream per subchannel, with real health servicers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from aiodiscovery import BalancedChannel, EtcdClient, Registrar, resolve

from .faulty_servers import NOT_SERVING, SERVING, FaultyServer, faulty_servers, registered
from .helpers import until
from .servers import method
from .test_pool import call, where
from .test_pool_options import hold_one_on

pytestmark = pytest.mark.anyio


def health(channel: BalancedChannel, server: FaultyServer) -> str | None:
    sub = channel.statistics().subchannels.get(server.address)
    return None if sub is None else sub.health


async def healthy(channel: BalancedChannel, count: int, timeout: float = 10) -> None:
    """Connect the channel and wait until ``count`` subchannels are READY and SERVING."""
    channel.get_state(try_to_connect=True)

    def serving() -> int:
        subs = channel.statistics().subchannels.values()
        return sum(s.state == "READY" and s.health in ("SERVING", "UNIMPLEMENTED") for s in subs)

    await until(lambda: serving() == count, timeout)


async def test_a_not_serving_server_gets_no_calls_until_serving_again(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with faulty_servers(3) as servers, registered(client, service, servers):
        async with await resolve(client, service, health_check="") as channel:
            await healthy(channel, 3)
            assert channel.statistics().by_health() == {"SERVING": 3}
            assert [s.watchers() for s in servers] == [1, 1, 1]
            held = await hold_one_on(channel, servers, 1)
            with caplog.at_level(logging.INFO, logger="aiodiscovery"):
                await servers[1].set_health(NOT_SERVING)
                await until(lambda: health(channel, servers[1]) == "NOT_SERVING")
            assert "health SERVING -> NOT_SERVING" in caplog.text
            before = servers[1].calls
            assert where([await call(channel) for _ in range(30)]) == {"s0": 15, "s2": 15}
            assert servers[1].calls == before
            # Its call in flight was not touched.
            assert not held.done()
            for server in servers:
                server.release.set()
            assert await held == b"s1:h"
            stats = channel.statistics().subchannels[servers[1].address]
            assert (stats.state, stats.health, stats.draining) == ("READY", "NOT_SERVING", False)
            await servers[1].set_health(SERVING)
            await healthy(channel, 3)
            assert set(where([await call(channel) for _ in range(30)])) == {"s0", "s1", "s2"}


async def test_without_a_health_service_an_endpoint_counts_as_healthy(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with faulty_servers(2, health=False) as servers, registered(client, service, servers):
        with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
            async with await resolve(client, service, health_check="") as channel:
                await healthy(channel, 2)
                assert channel.statistics().by_health() == {"UNIMPLEMENTED": 2}
                assert where([await call(channel) for _ in range(10)]) == {"s0": 5, "s1": 5}
    warnings = [r.getMessage() for r in caplog.records if "no health service" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert {servers[0].address in w for w in warnings} == {True, False}


async def test_no_healthy_endpoint_fails_fast_or_waits_for_ready(
    client: EtcdClient, service: str
) -> None:
    async with faulty_servers(2) as servers:
        for server in servers:
            await server.set_health(NOT_SERVING)
        async with registered(client, service, servers):
            async with await resolve(client, service, health_check="") as channel:
                channel.get_state(try_to_connect=True)
                await until(lambda: channel.statistics().by_health() == {"NOT_SERVING": 2})
                assert channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
                with anyio.fail_after(2), pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(channel)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
                assert info.value.details() == (
                    f"no usable endpoint of {service!r}: 2 NOT_SERVING (health check)"
                )
                waiting = channel.unary_unary(method("Unary"))(b"w", wait_for_ready=True)
                # Only a health answer can launch it: none has reached a server so far.
                assert not waiting.done()
                assert [s.calls for s in servers] == [0, 0]
                await servers[0].set_health(SERVING)
                assert await waiting == b"s0:w"
                assert [s.calls for s in servers] == [1, 0]
                with anyio.fail_after(5):
                    await channel.channel_ready()
                assert servers[1].calls == 0


async def test_calls_made_at_once_wait_for_the_first_health_answers(
    client: EtcdClient, service: str
) -> None:
    async with faulty_servers(2) as servers, registered(client, service, servers):
        channel = await resolve(client, service, health_check="")
        async with channel:
            # No answer has come yet: the calls wait for one instead of failing, as grpc
            # queues a call while its subchannel connects.
            assert channel.statistics().by_health() == {"PENDING": 2}
            assert channel.get_state() is grpc.ChannelConnectivity.IDLE
            assert channel.get_state(True) is grpc.ChannelConnectivity.CONNECTING
            replies = await asyncio.gather(*(call(channel, timeout=10) for _ in range(4)))
            assert set(where(replies)) <= {"s0", "s1"}
        # A service no server knows is not SERVING anywhere: calls made at once fail as soon
        # as the answers say so, with the reason.
        async with await resolve(client, service, health_check="no.such.Service") as unknown:
            with anyio.fail_after(5), pytest.raises(grpc.aio.AioRpcError) as info:
                await call(unknown)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "SERVICE_UNKNOWN" in (info.value.details() or "")


async def test_resolve_checks_its_arguments(client: EtcdClient, service: str) -> None:
    with pytest.raises(TypeError, match="health_check must be a service name"):
        await resolve(client, service, health_check=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"outlier_detection must be an aiodiscovery\.Outlier"):
        await resolve(client, service, outlier_detection={"interval": 1})  # type: ignore[arg-type]


async def test_the_named_service_is_the_one_watched(client: EtcdClient, service: str) -> None:
    async with faulty_servers(2) as servers, registered(client, service, servers):
        await servers[0].set_health(SERVING, "test.Echo")
        await servers[1].set_health(NOT_SERVING, "test.Echo")
        async with await resolve(client, service, health_check="test.Echo") as channel:
            await healthy(channel, 1)
            assert where([await call(channel) for _ in range(6)]) == {"s0": 6}
            assert [s.watchers("test.Echo") for s in servers] == [1, 1]
            assert [s.watchers("") for s in servers] == [0, 0]


async def test_the_health_watch_ends_with_its_subchannel(client: EtcdClient, service: str) -> None:
    async with faulty_servers(2) as servers, registered(client, service, servers[:1]):
        channel = await resolve(client, service, health_check="", drain_timeout=5)
        async with channel:
            async with Registrar(client, service, servers[1].address, ttl=5):
                await healthy(channel, 2)
                assert [s.watchers() for s in servers] == [1, 1]
            # Deregistered: the subchannel drains and closes, and its stream goes with it.
            await until(lambda: servers[1].address not in channel.statistics().subchannels)
            await until(lambda: servers[1].watchers() == 0)
            assert servers[0].watchers() == 1
        await until(lambda: servers[0].watchers() == 0)


class FlakyHealth(health_aio.HealthServicer):  # type: ignore[misc]
    """A health servicer whose first ``fail`` Watch calls fail; the next one answers once and
    ends, the ones after that are the real thing."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail
        self.watches = 0

    async def Watch(self, request: Any, context: Any) -> Any:
        self.watches += 1
        if self.watches <= self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "health not ready")
        if self.watches == self.fail + 1:
            await context.write(health_pb2.HealthCheckResponse(status=SERVING))
            await context.abort(grpc.StatusCode.INTERNAL, "health stream lost")
        await super().Watch(request, context)


async def test_a_failed_health_watch_is_opened_again_with_backoff(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = FaultyServer("s0", health=False)
    flaky = FlakyHealth(fail=2)
    health_pb2_grpc.add_HealthServicer_to_server(flaky, server.server)
    async with server, registered(client, service, [server]):
        with caplog.at_level(logging.INFO, logger="aiodiscovery"):
            async with await resolve(client, service, health_check="") as channel:
                started = anyio.current_time()
                await healthy(channel, 1)
                # Two failures without an answer: two backoffs (0.5-1 s, then 0.8-1.6 s); the
                # stream that answered once and broke was opened again at once.
                assert anyio.current_time() - started >= 1.3
                assert flaky.watches == 4
                assert await call(channel) == b"s0:x"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("health watch of" in m and "failed (UNAVAILABLE" in m for m in messages) == 2
    assert sum("ended (INTERNAL: health stream lost); opening it again" in m for m in messages) == 1


async def test_a_restarted_server_must_answer_again(client: EtcdClient, service: str) -> None:
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, health_check="") as channel:
            await healthy(channel, 2)
            address = servers[1].address
            await servers[1].stop(None)
            await until(lambda: health(channel, servers[1]) == "PENDING")
            assert where([await call(channel) for _ in range(4)]) == {"s0": 4}
            again = FaultyServer("s1-again")
            again.server.add_insecure_port(address)
            async with again:
                await again.set_health(NOT_SERVING)
                # Connected again, but not SERVING on this connection: still no calls.
                await until(lambda: health(channel, servers[1]) == "NOT_SERVING", timeout=30)
                assert where([await call(channel) for _ in range(4)]) == {"s0": 4}
                await again.set_health(SERVING)
                await healthy(channel, 2)
                assert "s1-again" in where([await call(channel) for _ in range(4)])
