"""Watching, registering and resolving through etcd's gRPC proxy, the proxy restarting meanwhile."""

from __future__ import annotations

import anyio
import pytest

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, Registrar, Watcher, resolve
from aiodiscovery.testing import EtcdCluster, EtcdGrpcProxy, free_port

from .helpers import until
from .servers import EchoServer, method

pytestmark = pytest.mark.anyio


async def test_watch_registrar_and_resolve_ride_a_proxy_restart(service: str) -> None:
    async with EtcdCluster(3) as cluster, EtcdGrpcProxy(cluster) as proxy:
        # The servers' side and the clients' side both go through the proxy.
        client = await aiodiscovery.connect(proxy.url, timeout=2)
        # Loopback only: the pool dials whatever is registered (here: a port nobody listens on).
        gone = Endpoint(f"127.0.0.1:{free_port()}")
        observer = await aiodiscovery.connect(cluster.urls)
        try:
            async with (
                EchoServer("a") as server,
                Registrar(client, service, server.address, ttl=5) as reg,
                Watcher(client, service) as watcher,
            ):
                channel = await resolve(client, service)
                async with channel:
                    call = channel.unary_unary(method("Unary"))
                    assert await call(b"x", timeout=5) == b"a:x"
                    lease = reg.lease_id
                    proxy.kill()
                    # Changed while the proxy is down: the watch must resume past it.
                    await EndpointManager(observer, service).add_endpoint(
                        f"{service}/while-down", gone
                    )
                    await proxy.restart()
                    with anyio.fail_after(20):
                        while f"{service}/while-down" not in watcher.snapshot:
                            await watcher.wait_for_change()
                    # The registrar kept its lease alive through the new proxy process.
                    before = reg.statistics().keepalive_round_trips
                    await until(
                        lambda: reg.statistics().keepalive_round_trips > before + 1, timeout=20
                    )
                    assert reg.registered and reg.lease_id == lease
                    assert reg.statistics().losses == 0
                    # Calls never depended on the proxy: the server is dialled directly.
                    assert await call(b"y", timeout=5) == b"a:y"
                    assert watcher.statistics().reconnects >= 1
            # Leaving the Registrar block revoked the lease through the proxy.
            assert await EndpointManager(observer, service).list_endpoints() == {
                f"{service}/while-down": gone
            }
        finally:
            await client.close()
            await observer.close()
