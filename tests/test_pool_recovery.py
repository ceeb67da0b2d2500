"""The pool through server restarts and registry accidents, with real servers and real etcd."""

from __future__ import annotations

import logging

import anyio
import anyio.to_thread
import grpc
import grpc.aio
import pytest

from aiodiscovery import (
    BalancedChannel,
    Endpoint,
    EndpointManager,
    EtcdClient,
    MassRemovalProtection,
    Registrar,
    Update,
    resolve,
)
from aiodiscovery.testing import EtcdServer

from .helpers import until
from .servers import EchoServer
from .test_pool import call, drained, echo_servers, ready, registered, under_load, where

pytestmark = pytest.mark.anyio

# gRPC's reconnect backoff, stretched so far that only a fresh connection can be in time.
SLOW_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 60_000),
    ("grpc.min_reconnect_backoff_ms", 60_000),
    ("grpc.max_reconnect_backoff_ms", 60_000),
]


def state_of(channel: BalancedChannel, address: str) -> str | None:
    sub = channel.statistics().subchannels.get(address)
    return None if sub is None else sub.state


async def put_and_wait(em: EndpointManager, channel: BalancedChannel, key: str, addr: str) -> None:
    """(Re)register ``addr`` under ``key`` and wait until the pool has seen it."""
    await em.add_endpoint(key, Endpoint(addr))
    revision = (await em.client.get(key.encode())).mod_revision
    await until(lambda: channel.statistics().revision >= revision)


async def test_a_server_back_on_its_address_is_reached_at_once(
    client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    key = f"{service}/srv"
    async with EchoServer("old") as old:
        address = old.address
        await em.add_endpoint(key, Endpoint(address))
        channel = await resolve(client, service, options=SLOW_RECONNECT)
        await ready(channel, 1)
        assert await call(channel) == b"old:x"
    async with channel:
        # The server left without deregistering (its key is still there): after one failed
        # attempt to reconnect, gRPC backs off for a minute.
        await until(lambda: state_of(channel, address) == "TRANSIENT_FAILURE")
        new = EchoServer("new")
        new.server.add_insecure_port(address)
        async with new:
            # Registered again, with the same value: a new revision of the same key.
            await put_and_wait(em, channel, key, address)
            # Well within the backoff the old connection still sits out.
            assert await call(channel, wait_for_ready=True, timeout=20) == b"new:x"
            assert channel.statistics().subchannels[address].reconnects == 1
            # Registered again while READY: the connection is fine and stays.
            await put_and_wait(em, channel, key, address)
            assert await call(channel) == b"new:x"
            assert channel.statistics().subchannels[address].reconnects == 1
            assert (old.calls, new.calls) == (1, 2)


def retained(channel: BalancedChannel) -> set[str]:
    return {a for a, s in channel.statistics().subchannels.items() if s.retained}


def registered_ready(channel: BalancedChannel) -> set[str]:
    subs = channel.statistics().subchannels.items()
    return {a for a, s in subs if s.state == "READY" and not (s.retained or s.draining)}


async def delete_prefix(etcd: EtcdServer, service: str) -> None:
    """What an operator's mistake looks like: every key of the service gone in one go."""
    await anyio.to_thread.run_sync(etcd.etcdctl, "del", "--prefix", f"{service}/")


async def test_a_mass_deletion_keeps_ready_endpoints_in_use(
    etcd: EtcdServer, client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    em = EndpointManager(client, service)
    async with echo_servers(3) as servers:
        for server in servers:
            await em.add_endpoint(f"{service}/{server.name}", Endpoint(server.address))
        async with await resolve(client, service) as channel:
            await ready(channel, 3)
            with caplog.at_level(logging.INFO, logger="aiodiscovery"):
                await delete_prefix(etcd, service)
                await until(lambda: len(retained(channel)) == 3)
                stats = channel.statistics()
                assert stats.mass_removals == 1
                assert stats.retained_for is not None and 20 < stats.retained_for <= 30
                assert where([await call(channel) for _ in range(30)]) == {
                    "s0": 10,
                    "s1": 10,
                    "s2": 10,
                }
                # A kept endpoint is kept only while it works.
                await servers[2].stop(None)
                await until(lambda: drained(channel, servers[2].address))
                assert where([await call(channel) for _ in range(10)]) == {"s0": 5, "s1": 5}
                # Registrations come back: the one left kept is a minority now, and drains.
                for server in servers[:2]:
                    await em.add_endpoint(f"{service}/{server.name}", Endpoint(server.address))
                await until(lambda: channel.statistics().retained_for is None)
                await until(lambda: registered_ready(channel) == {s.address for s in servers[:2]})
                assert retained(channel) == set()
                assert where([await call(channel) for _ in range(10)]) == {"s0": 5, "s1": 5}
    messages = [r.getMessage() for r in caplog.records]
    began = "3 endpoints removed within 2 s, 0 left: mass-removal protection keeps"
    assert sum(began in m for m in messages) == 1
    assert sum("mass-removal protection ends (registrations are back)" in m for m in messages) == 1


async def test_mass_removal_protection_is_bounded_and_optional(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    async with echo_servers(2) as servers:
        for server in servers:
            await em.add_endpoint(f"{service}/{server.name}", Endpoint(server.address))
        short = await resolve(client, service, mass_removal=MassRemovalProtection(grace=0.5))
        unprotected = await resolve(client, service, mass_removal=None)
        async with short, unprotected:
            await ready(short, 2)
            await ready(unprotected, 2)
            await delete_prefix(etcd, service)
            for channel in (short, unprotected):
                await until(lambda c=channel: c.statistics().subchannels == {})
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(channel)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert short.statistics().mass_removals == 1
            assert unprotected.statistics().mass_removals == 0


async def test_a_mass_deletion_under_load_fails_no_call(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers):
        async with await resolve(client, service) as channel:
            await ready(channel, 3)
            async with under_load(channel) as load:
                await load.more(100)
                await delete_prefix(etcd, service)
                # Each Registrar notices its key gone and writes it again.
                await until(lambda: channel.statistics().mass_removals == 1)
                await until(lambda: registered_ready(channel) == {s.address for s in servers})
                await load.more(300)
    assert load.failures == [], [(f.code(), f.details()) for f in load.failures[:5]]
    assert set(where(load.replies)) == {"s0", "s1", "s2"}


async def test_one_of_two_servers_leaving_drains_at_once(client: EtcdClient, service: str) -> None:
    async with echo_servers(2) as servers, registered(client, service, servers[:1]):
        async with await resolve(client, service) as channel:
            async with Registrar(client, service, servers[1].address, ttl=5):
                await ready(channel, 2)
            await until(lambda: drained(channel, servers[1].address))
            stats = channel.statistics()
            assert stats.mass_removals == 0 and stats.retained_for is None
            assert where([await call(channel) for _ in range(10)]) == {"s0": 10}


async def test_mass_removal_threshold_and_window(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    async with echo_servers(4) as servers:
        keys = [f"{service}/{s.name}" for s in servers]
        for key, server in zip(keys, servers, strict=True):
            await em.add_endpoint(key, Endpoint(server.address))
        configs = {
            "default": MassRemovalProtection(threshold=0.5, window=60),
            "high threshold": MassRemovalProtection(threshold=0.8, window=60),
            "no window": MassRemovalProtection(threshold=0.5, window=0),
        }
        channels = {
            name: await resolve(client, service, mass_removal=c) for name, c in configs.items()
        }
        try:
            for channel in channels.values():
                await ready(channel, 4)

            async def step(*updates: Update) -> None:
                await em.update(list(updates))
                revision = (await em.list_batch()).revision
                for channel in channels.values():
                    await until(lambda c=channel: c.statistics().revision >= revision)

            # Two of four at once: not more than half, for every configuration.
            await step(Update.delete(keys[0]), Update.delete(keys[1]))
            assert {n: c.statistics().mass_removals for n, c in channels.items()} == dict.fromkeys(
                channels, 0
            )
            # A third within the window: 3 of 4 is above 0.5, not above 0.8; without a window
            # it is 1 of 2 on its own, not above 0.5.
            await step(Update.delete(keys[2]))
            assert {n: c.statistics().mass_removals for n, c in channels.items()} == {
                "default": 1,
                "high threshold": 0,
                "no window": 0,
            }
        finally:
            for channel in channels.values():
                await channel.close()
