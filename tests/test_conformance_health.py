"""The service config's health checks and balancer (gRFC A17) beside grpcio's own core.

Two servers, ``a`` and ``b``; the same service config on a native ``grpc.aio`` channel to both
and on ``resolve()`` over both registered in etcd. What counts is where the calls went.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
import pytest

from aiodiscovery import EtcdClient

from .faulty_servers import NOT_SERVING, SERVING, FaultyServer, faulty_servers
from .grpc_differential import both_channels, run, unary

pytestmark = pytest.mark.anyio

SERVICE = "svc"


def health_config(policy: str = "round_robin", service: str = SERVICE) -> dict[str, Any]:
    return {
        "loadBalancingConfig": [{policy: {}}],
        "healthCheckConfig": {"serviceName": service},
    }


async def ready_call(channel: grpc.aio.Channel) -> Any:
    # Without wait_for_ready: a channel whose first health answers are on their way holds the
    # call (grpc core: CONNECTING) rather than fail it, on both sides.
    return await unary(channel, timeout=10)


async def where(channel: grpc.aio.Channel, servers: list[FaultyServer], calls: int) -> Counter[str]:
    """How many of ``calls`` calls each server got."""
    before = {s.name: s.calls for s in servers}
    observed = await run(channel, servers, ready_call, calls)
    assert all(o.code is grpc.StatusCode.OK for o in observed.outcomes), observed.outcomes
    return Counter({s.name: s.calls - before[s.name] for s in servers})


async def reached_both(channel: grpc.aio.Channel, servers: list[FaultyServer]) -> None:
    """Call until both servers took a call: both were found healthy (bounded)."""
    with anyio.fail_after(20):
        seen: Counter[str] = Counter()
        while len(+seen) < 2:
            seen += await where(channel, servers, 2)


async def set_health(servers: list[FaultyServer], *statuses: int) -> None:
    for server, status in zip(servers, statuses, strict=True):
        if server.health is not None:
            await server.set_health(status, SERVICE)


async def test_a_not_serving_endpoint_gets_no_call(client: EtcdClient, service: str) -> None:
    async with faulty_servers(2) as servers:
        await set_health(servers, SERVING, NOT_SERVING)
        async with both_channels(client, service, servers, health_config()) as (native, ours):
            core = await where(native, servers, 20)
            pool = await where(ours, servers, 20)
            # The pool itself checks, as with health_check="svc"; its subchannels' own core
            # channels got no healthCheckConfig (each server sees one Watch per channel).
            assert ours.statistics().by_health() == {"SERVING": 1, "NOT_SERVING": 1}
            assert [s.watchers(SERVICE) for s in servers] == [2, 2]
        assert core == pool == Counter({"s0": 20, "s1": 0})


@contextlib.asynccontextmanager
async def both_serving(
    client: EtcdClient, service: str
) -> AsyncIterator[tuple[list[FaultyServer], grpc.aio.Channel, grpc.aio.Channel]]:
    """Two SERVING servers, and both channels once each has sent a call to each."""
    async with faulty_servers(2) as servers:
        await set_health(servers, SERVING, SERVING)
        async with both_channels(client, service, servers, health_config()) as (native, ours):
            for channel in (native, ours):
                await reached_both(channel, servers)
            yield servers, native, ours


async def test_serving_endpoints_share_the_calls(client: EtcdClient, service: str) -> None:
    async with both_serving(client, service) as (servers, native, ours):
        core = await where(native, servers, 20)
        pool = await where(ours, servers, 20)
        # One Watch per server from each side: the core channel's and the pool's, and none
        # from the pool's subchannels behind its back.
        assert [s.watchers(SERVICE) for s in servers] == [2, 2]
    assert core == pool == Counter({"s0": 10, "s1": 10})


async def test_an_endpoint_going_not_serving_is_left(client: EtcdClient, service: str) -> None:
    async with both_serving(client, service) as (servers, native, ours):
        await set_health(servers, SERVING, NOT_SERVING)
        for channel in (native, ours):
            # The news takes one message on the Watch stream: wait until calls avoid s1.
            with anyio.fail_after(10):
                while (await where(channel, servers, 2))["s1"]:
                    pass
            assert (await where(channel, servers, 20))["s1"] == 0


async def test_without_the_health_service_an_endpoint_counts_as_healthy(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with faulty_servers(1) as healthy, faulty_servers(1, health=False) as bare:
        servers = [*healthy, *bare]
        bare[0].name = "s1"
        await set_health(servers, SERVING, SERVING)
        with caplog.at_level(logging.INFO, logger="aiodiscovery"):
            async with both_channels(client, service, servers, health_config()) as (native, ours):
                for channel in (native, ours):
                    await reached_both(channel, servers)
        # gRFC A17: UNIMPLEMENTED is logged at ERROR (grpc core does so on its own log).
        unimplemented = [r for r in caplog.records if "no health service" in r.getMessage()]
        assert [r.levelno for r in unimplemented] == [logging.ERROR]


async def test_a_broken_health_stream_keeps_calls_away(client: EtcdClient, service: str) -> None:
    async with faulty_servers(2) as servers:
        await set_health(servers, SERVING, SERVING)
        assert servers[1].health is not None
        servers[1].health.broken = True
        async with both_channels(client, service, servers, health_config()) as (native, ours):
            core = await where(native, servers, 20)
            pool = await where(ours, servers, 20)
        assert core == pool == Counter({"s0": 20, "s1": 0})


@pytest.mark.parametrize("policy", ["pick_first", "round_robin"])
async def test_load_balancing_config_chooses_the_policy(
    client: EtcdClient, service: str, policy: str
) -> None:
    config = {"loadBalancingConfig": [{"weighted_target_experimental_nope": {}}, {policy: {}}]}
    async with faulty_servers(2) as servers:
        async with both_channels(client, service, servers, config) as (native, ours):
            if policy == "round_robin":
                for channel in (native, ours):
                    await reached_both(channel, servers)
            core = await where(native, servers, 20)
            pool = await where(ours, servers, 20)
        if policy == "round_robin":
            assert core == pool == Counter({"s0": 10, "s1": 10})
        else:
            # pick_first: every call to one server (the first address, for grpc core; the
            # first the pool took up, for the pool).
            assert sorted(core.values()) == sorted(pool.values()) == [0, 20]


async def test_pick_first_honours_health_checks_unlike_grpc_core(
    client: EtcdClient, service: str
) -> None:
    # Intended difference (docs/guides/clients.md, "Client-side health checking"): grpc core
    # runs no health checks under pick_first, so it keeps sending calls to a NOT_SERVING first
    # address; the pool's pick_first moves on to a SERVING endpoint.
    async with faulty_servers(2) as servers:
        await set_health(servers, NOT_SERVING, SERVING)
        config = health_config("pick_first")
        async with both_channels(client, service, servers, config) as (native, ours):
            core = await where(native, servers, 10)
            pool = await where(ours, servers, 10)
            assert ours.statistics().by_health() == {"SERVING": 1, "NOT_SERVING": 1}
        assert core == Counter({"s0": 10, "s1": 0})
        assert pool == Counter({"s0": 0, "s1": 10})
