"""The kit's network faults: a proxy's latency and selective cut, a member isolated from its
peers, a member replaced; on real sockets and a real etcd cluster."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

from aiodiscovery.testing import EtcdCluster, EtcdServer, TcpProxy

from .helpers import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A loopback TCP echo server."""

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
            except anyio.BrokenResourceError:
                return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


async def round_trip(stream: anyio.abc.SocketStream) -> float:
    start = time.monotonic()
    await stream.send(b"ping")
    with anyio.fail_after(10):
        assert await stream.receive() == b"ping"
    return time.monotonic() - start


async def test_latency_delays_each_way_and_can_change(echo_port: int) -> None:
    async with TcpProxy(echo_port, latency=0.2) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            # Both directions wait: a round trip cannot be quicker than twice the latency.
            assert await round_trip(stream) >= 0.4
            proxy.latency = 0.0
            await round_trip(stream)
            proxy.latency = 0.3
            assert await round_trip(stream) >= 0.6


async def test_cut_from_cuts_only_the_chosen_clients(echo_port: int) -> None:
    async with (
        TcpProxy(echo_port) as proxy,
        await anyio.connect_tcp("127.0.0.1", proxy.port) as chosen,
        await anyio.connect_tcp("127.0.0.1", proxy.port) as spared,
    ):
        await round_trip(chosen)
        await round_trip(spared)
        port = chosen.extra(anyio.abc.SocketAttribute.local_port)
        proxy.cut_from(lambda peer: peer[1] == port)
        with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
            await round_trip(chosen)
            await round_trip(chosen)
        await round_trip(spared)
        proxy.heal()
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as again:
            await round_trip(again)


async def value_on(member: EtcdServer, key: str) -> str:
    """``key``'s value as ``member`` alone knows it (a serializable read)."""
    out = await member.etcdctl_async("get", key, "--consistency=s", "--print-value-only")
    return out.strip()


async def test_an_isolated_member_serves_clients_but_misses_writes_until_it_rejoins() -> None:
    async with EtcdCluster(3, peer_proxies=True) as cluster:
        leader = await cluster.leader_async()
        lonely = next(m for m in cluster.members if m is not leader)
        others = [m for m in cluster.members if m is not lonely]
        cluster.isolate(lonely)
        try:
            urls = ",".join(m.url for m in others)
            await others[0].etcdctl_async("put", "isolated", "written", endpoints=urls)
            # It still answers its clients, from what it had before the cut.
            assert await value_on(lonely, "isolated") == ""
            assert await value_on(others[1], "isolated") == "written"
        finally:
            cluster.rejoin(lonely)
        await eventually(lambda: value_on(lonely, "isolated"), lambda v: v == "written")


async def test_isolate_needs_peer_proxies() -> None:
    cluster = EtcdCluster(1)
    with pytest.raises(RuntimeError, match="peer_proxies"):
        cluster.isolate(cluster.members[0])


async def test_a_replaced_member_serves_on_the_same_url_from_a_fresh_data_dir() -> None:
    async with EtcdCluster(3, peer_proxies=True) as cluster:
        await cluster.etcdctl_async("put", "kept", "yes")
        old = cluster.members[1]
        fresh = await cluster.replace(old)
        assert cluster.members[1] is fresh and not old.running
        assert fresh.url == old.url and fresh.data_dir != old.data_dir
        listed = json.loads(await cluster.etcdctl_async("member", "list", "-w", "json"))
        assert sorted(m["name"] for m in listed["members"]) == sorted(
            m.name for m in cluster.members
        )
        await eventually(lambda: value_on(fresh, "kept"), lambda v: v == "yes")
        await cluster.etcdctl_async("put", "after", "replacement")
        await eventually(lambda: value_on(fresh, "after"), lambda v: v == "replacement")
