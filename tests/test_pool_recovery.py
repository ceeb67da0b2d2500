"""The pool through server restarts and registry accidents, with real servers and real etcd."""

from __future__ import annotations

import pytest

from aiodiscovery import BalancedChannel, Endpoint, EndpointManager, EtcdClient, resolve

from .helpers import until
from .servers import EchoServer
from .test_pool import call, ready

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
