"""etcd's gRPC proxy from the testing kit, with aiodiscovery clients going through it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, EtcdClient, EtcdUnavailableError, Update
from aiodiscovery.testing import EtcdCluster, EtcdGrpcProxy, EtcdServer

pytestmark = pytest.mark.anyio


async def next_batch(batches: AsyncIterator[list[Update]]) -> list[tuple[str, str | None]]:
    with anyio.fail_after(15):
        batch = await anext(batches)
    return [(u.key.rsplit("/", 1)[1], u.endpoint.addr if u.endpoint else None) for u in batch]


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


async def accepted_after_a_fault(write: Callable[[], Awaitable[object]]) -> None:
    """Retry ``write`` until the proxy takes it. Until the proxy has noticed a dead member, a
    request it sent there fails with its own "context deadline exceeded" (UNKNOWN)."""
    with anyio.fail_after(30):
        while True:
            try:
                await write()
            except aiodiscovery.EtcdError:
                continue
            return


async def put_get_watch(client: EtcdClient, service: str) -> None:
    """Writes, a read and a watch through the proxy, with the public API only."""
    em = EndpointManager(client, service)
    await accepted_after_a_fault(lambda: em.add_endpoint(f"{service}/e1", Endpoint("10.0.0.1:1")))
    assert await em.list_endpoints() == {f"{service}/e1": Endpoint("10.0.0.1:1")}
    async with contextlib.aclosing(em.watch()) as batches:
        assert await next_batch(batches) == [("e1", "10.0.0.1:1")]
        await em.add_endpoint(f"{service}/e2", Endpoint("10.0.0.2:1", {"zone": "a"}))
        assert await next_batch(batches) == [("e2", "10.0.0.2:1")]
        await em.delete_endpoint(f"{service}/e1")
        assert await next_batch(batches) == [("e1", None)]


async def test_a_client_puts_gets_and_watches_through_the_proxy(
    etcd: EtcdServer, service: str
) -> None:
    async with EtcdGrpcProxy(etcd) as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        assert proxy.port != etcd.client_port
        client = await aiodiscovery.connect(proxy.url)
        try:
            await put_get_watch(client, service)
        finally:
            await client.close()
        # What went through the proxy is in etcd itself.
        value = etcd.etcdctl("get", f"{service}/e2", "--print-value-only").strip()
        assert value == '{"Op":0,"Addr":"10.0.0.2:1","Metadata":{"zone":"a"}}'
        pid = proxy.pid
        assert pid is not None
    assert not proxy.running
    assert not proxy._base.exists()
    with pytest.raises(FileNotFoundError):
        process_state(pid)


async def test_proxy_faults_kill_stop_resume_restart_on_the_same_port(
    etcd: EtcdServer, service: str
) -> None:
    async with EtcdGrpcProxy(etcd) as proxy:
        port = proxy.port
        client = await aiodiscovery.connect(proxy.url)
        em = EndpointManager(client, service)
        try:
            await em.add_endpoint(f"{service}/before", Endpoint("a:1"))
            pid = proxy.pid
            assert pid is not None
            proxy.stop()
            assert process_state(pid) == "T"
            proxy.resume()
            proxy.kill()
            assert not proxy.running
            with pytest.raises(EtcdUnavailableError):
                await em.list_endpoints()
            await proxy.restart()
            assert proxy.port == port and proxy.pid not in (None, pid)
            await accepted_after_a_fault(
                lambda: em.add_endpoint(f"{service}/after", Endpoint("b:1"))
            )
            assert set(await em.list_endpoints()) == {f"{service}/before", f"{service}/after"}
        finally:
            await client.close()


def test_sync_form_with_etcdctl_through_the_proxy(etcd: EtcdServer, service: str) -> None:
    with EtcdGrpcProxy(etcd) as proxy:
        proxy.etcdctl("put", f"{service}/k", "v")
        assert proxy.etcdctl("get", f"{service}/k", "--print-value-only") == "v\n"
        assert etcd.etcdctl("get", f"{service}/k", "--print-value-only") == "v\n"
    assert not proxy.running


async def test_proxy_in_front_of_a_mutual_tls_cluster_rides_a_member_loss(service: str) -> None:
    async with (
        EtcdCluster(3, client_cert_auth=True) as cluster,
        EtcdGrpcProxy(cluster) as proxy,
    ):
        assert proxy.url.startswith("https://")
        client = await aiodiscovery.connect(proxy.url, **proxy.tls_kwargs(), timeout=2)
        try:
            leader = await cluster.leader_async()
            next(m for m in cluster.members if m is not leader).kill()
            await put_get_watch(client, service)
        finally:
            await client.close()
        # The proxy demands a client certificate signed by the cluster's CA, as etcd does.
        with pytest.raises(EtcdUnavailableError, match="refused the client certificate"):
            await aiodiscovery.connect(proxy.url, ca=cluster.members[0].ca_path, timeout=1)
