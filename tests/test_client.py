"""EtcdClient: aetcd's API on the client, options on every member, IPv6 members, require-leader."""

from __future__ import annotations

import grpc
import pytest

import aiodiscovery
from aiodiscovery import (
    Endpoint,
    EndpointManager,
    EtcdClient,
    EtcdError,
    EtcdUnavailableError,
    Watcher,
)
from aiodiscovery._etcd.rpc import member_trouble, translate_error
from aiodiscovery.testing import EtcdCluster, EtcdServer, free_port

from .helpers import until

pytestmark = pytest.mark.anyio


async def test_aetcd_methods_run_over_the_clients_own_channels(
    client: EtcdClient, service: str
) -> None:
    key = f"{service}/aetcd".encode()
    await client.put(key, b"v1")
    got = await client.get(key)
    assert got is not None and got.value == b"v1"
    lease = await client.lease(30)
    await client.put(key + b"-leased", b"v", lease=lease)
    assert (await client.get_lease_info(lease.id)).TTL > 0
    await client.revoke_lease(lease.id)
    assert await client.get(key + b"-leased") is None
    # aetcd's watches, on the view's own watcher.
    watch = await client.watch_prefix(key)
    await client.put(key, b"v2")
    async for event in watch:
        assert event.kv.value == b"v2"
        break
    await watch.cancel()
    await client.put(key, b"v3")
    once = await client.aetcd.watch_once(key, timeout=5, start_revision=1)
    assert once.kv.value == b"v1"
    # The view is an aetcd.Client bound to the member in use.
    assert client.aetcd.kvstub is client.members.active.kv
    with pytest.raises(AttributeError, match="no attribute 'no_such_method'"):
        client.no_such_method  # noqa: B018


async def test_aetcd_methods_work_over_tls_which_aetcd_alone_cannot_do(
    service: str,
) -> None:
    async with EtcdServer(client_cert_auth=True) as etcd:
        client = await aiodiscovery.connect(etcd.url, **etcd.tls_kwargs())
        try:
            await client.put(f"{service}/tls".encode(), b"v")
            got = await client.get(f"{service}/tls".encode())
            assert got is not None and got.value == b"v"
        finally:
            await client.close()


async def test_options_reach_every_member_channel(etcd: EtcdServer, service: str) -> None:
    # Two URLs for one member: two channels. A tiny receive limit on both makes a list of one
    # large value fail on either, which it would not if the option were dropped.
    urls = [etcd.url, etcd.url.replace("127.0.0.1", "localhost")]
    client = await aiodiscovery.connect(urls, options=[("grpc.max_receive_message_length", 2048)])
    try:
        em = EndpointManager(client, service)
        await em.add_endpoint(f"{service}/big", Endpoint("10.0.0.1:1", "x" * 8000))
        for _ in urls:
            with pytest.raises(EtcdError) as info:
                await em.list_endpoints()
            assert info.value.code == "RESOURCE_EXHAUSTED"
            client.members.abandon(client.members.active, "test: use the other channel")
        assert client.statistics().members.failovers == 2
    finally:
        await client.close()


async def test_ipv6_members(service: str) -> None:
    port = free_port()
    listen = f"--listen-client-urls=http://127.0.0.1:{port},http://[::1]:{port}"
    async with EtcdServer(client_port=port, extra_args=[listen]):
        client = await aiodiscovery.connect(f"http://[::1]:{port}")
        try:
            em = EndpointManager(client, service)
            await em.add_endpoint(f"{service}/v6", Endpoint("[::1]:50051"))
            assert await em.list_endpoints() == {f"{service}/v6": Endpoint("[::1]:50051")}
            assert client.members.active.url == f"http://[::1]:{port}"
        finally:
            await client.close()


async def test_a_watch_on_a_member_without_a_leader_is_ended_by_etcd(service: str) -> None:
    # The member stays up and answers every probe, but has lost the quorum: only the
    # require-leader flag on the watch stream (Go's WithRequireLeader) makes etcd end the watch,
    # so that the client does not keep a view nobody updates.
    async with EtcdCluster(3) as cluster:
        kept, *others = cluster.members
        client = await aiodiscovery.connect(kept.url)
        try:
            async with Watcher(client, service) as watcher:
                for member in others:
                    member.kill()
                await until(lambda: watcher.statistics().reconnects >= 1, timeout=20)
        finally:
            await client.close()


def test_an_upstream_timeout_reported_by_the_grpc_proxy_reads_as_unavailable() -> None:
    # etcd's proxy reports a request its upstream did not answer in time as UNKNOWN "context
    # deadline exceeded" (seen when a member behind it dies): retry loops must see the same
    # EtcdUnavailableError as for a member's own timeout, and the client must move on.
    def error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    proxied = error(grpc.StatusCode.UNKNOWN, "context deadline exceeded")
    assert member_trouble(proxied)
    assert isinstance(translate_error(proxied), EtcdUnavailableError)
    assert member_trouble(error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert not member_trouble(error(grpc.StatusCode.UNKNOWN, "something else"))
    assert not member_trouble(error(grpc.StatusCode.PERMISSION_DENIED, "permission denied"))
