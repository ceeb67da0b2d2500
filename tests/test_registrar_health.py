"""Registrar(health_check=...): registered only while the server's own health service says SERVING.

Real grpc.aio servers on loopback with grpcio-health-checking's asyncio HealthServicer, real etcd.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import grpc
import pytest
from aetcd import rpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from aiodiscovery import (
    EtcdClient,
    HealthCheckError,
    LeaseKeeper,
    Registrar,
    RegistrarState,
    Watcher,
)
from aiodiscovery._registrar.health import WATCH_METHOD
from aiodiscovery.testing import EtcdServer, free_port

from .helpers import eventually, until
from .servers import EchoServer
from .test_registrar import LOOP_SLACK, lease_ttl, read_key, run_etcdctl

pytestmark = pytest.mark.anyio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServer:
    """A grpc.aio server with the standard asyncio HealthServicer, on ``port`` (0: a free one)."""

    def __init__(self, port: int = 0) -> None:
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"


@asynccontextmanager
async def health_server(port: int = 0) -> AsyncIterator[HealthServer]:
    server = HealthServer(port)
    await server.server.start()
    try:
        yield server
    finally:
        await server.server.stop(None)


async def mod_revision(client: EtcdClient, key: str) -> int | None:
    reply = await client.members.active.kv.Range(rpc.RangeRequest(key=key.encode()), timeout=5)
    return int(reply.kvs[0].mod_revision) if reply.kvs else None


async def test_registered_only_while_serving(client: EtcdClient, service: str) -> None:
    async with health_server() as server:
        await server.health.set("greeter", SERVING)
        reg = Registrar(client, service, server.address, ttl=5, health_check="greeter")
        async with reg:
            assert reg.registered
            lease = reg.lease_id
            assert lease is not None
            assert reg.statistics().health == "SERVING"
            for status, shown in (
                (NOT_SERVING, "NOT_SERVING"),
                (SERVICE_UNKNOWN, "SERVICE_UNKNOWN"),
            ):
                await server.health.set("greeter", status)
                # Deleted, so that resolvers drain the server at once.
                await eventually(lambda: read_key(client, reg.key), lambda found: found is None)
                await until(lambda: reg.state is RegistrarState.UNHEALTHY)
                assert not reg.registered and reg.statistics().health == shown
                # The lease stays: registering again is one put.
                assert await lease_ttl(client, lease) >= 0
                await server.health.set("greeter", SERVING)
                found = await eventually(
                    lambda: read_key(client, reg.key), lambda found: found is not None
                )
                assert found is not None and found[1] == lease
                with anyio.fail_after(10):
                    await reg.wait_registered()
            stats = reg.statistics()
            assert stats.health_deregistrations == 2 and stats.registrations == 3, stats
            # Not losses: nothing went wrong.
            assert stats.losses == 0 and stats.leases_granted == 1 and stats.health_streams == 1
        assert await read_key(client, reg.key) is None


async def test_graceful_shutdown_drains_the_server(client: EtcdClient, service: str) -> None:
    async with (
        health_server() as server,
        Registrar(client, service, server.address, ttl=5, health_check="") as reg,
        Watcher(client, service) as watcher,
    ):
        # "": the whole server, SERVING from the start with the standard servicer.
        assert reg.registered and list(watcher.snapshot) == [reg.key]
        await server.health.enter_graceful_shutdown()
        with anyio.fail_after(10):
            while reg.key in watcher.snapshot:
                await watcher.wait_for_change()
        assert reg.state is RegistrarState.UNHEALTHY and reg.statistics().losses == 0


async def test_on_a_shared_lease_only_the_unhealthy_service_goes(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    async with health_server() as server:
        await server.health.set("a", SERVING)
        await server.health.set("b", SERVING)
        async with (
            LeaseKeeper(client, ttl=5) as keeper,
            Registrar(client, f"{service}-a", server.address, lease=keeper, health_check="a") as a,
            Registrar(client, f"{service}-b", server.address, lease=keeper, health_check="b") as b,
        ):
            await server.health.set("a", NOT_SERVING)
            await eventually(lambda: read_key(client, a.key), lambda found: found is None)
            found = await read_key(client, b.key)
            assert found is not None and found[1] == keeper.lease_id and b.registered
            assert keeper.alive and keeper.statistics().losses == 0
            # The shared lease is lost meanwhile: only the serving one is written again.
            old = keeper.lease_id
            assert old is not None
            await run_etcdctl(etcd, "lease", "revoke", f"{old:x}")
            found = await eventually(
                lambda: read_key(client, b.key),
                lambda found: found is not None and found[1] != old,
            )
            assert found is not None and found[1] == keeper.lease_id
            assert await read_key(client, a.key) is None and a.state is RegistrarState.UNHEALTHY
            # Serving again: written under the keeper's new lease.
            await server.health.set("a", SERVING)
            found = await eventually(
                lambda: read_key(client, a.key), lambda found: found is not None
            )
            assert found is not None and found[1] == keeper.lease_id
            await server.health.enter_graceful_shutdown()
            for reg in (a, b):
                await eventually(lambda reg=reg: read_key(client, reg.key), lambda f: f is None)
            assert a.state is b.state is RegistrarState.UNHEALTHY


async def test_not_serving_at_entry_registers_once_serving(
    client: EtcdClient, service: str
) -> None:
    async with health_server() as server:
        # No status set yet for "late": the standard servicer answers SERVICE_UNKNOWN.
        async with Registrar(client, service, server.address, health_check="late") as reg:
            assert reg.state is RegistrarState.UNHEALTHY
            assert reg.statistics().health == "SERVICE_UNKNOWN"
            assert await read_key(client, reg.key) is None
            await server.health.set("late", SERVING)
            with anyio.fail_after(10):
                await reg.wait_registered()
            found = await read_key(client, reg.key)
            assert found is not None and found[1] == reg.lease_id
            assert reg.statistics().health_deregistrations == 0


async def test_a_server_without_a_health_service_is_an_error_at_entry(
    client: EtcdClient, service: str
) -> None:
    async with EchoServer("plain") as server:
        reg = Registrar(client, service, server.address, health_check="")
        with pytest.raises(HealthCheckError, match="has no gRPC health service") as caught:
            async with reg:
                pytest.fail("entered without a health service")
        assert server.address in str(caught.value) and WATCH_METHOD in str(caught.value)
        assert reg.state is RegistrarState.CLOSED
        assert await read_key(client, reg.key) is None
        # The lease granted for it was revoked on the way out.
        stats = reg.statistics()
        assert stats.leases_granted == 1 and stats.revokes == 1 and stats.puts == 0


async def test_no_server_at_entry_fails_within_start_timeout(
    client: EtcdClient, service: str
) -> None:
    reg = Registrar(client, service, f"127.0.0.1:{free_port()}", health_check="", start_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(HealthCheckError, match=r"no health status .* within 1 s"):
        async with reg:
            pytest.fail("entered without a server")
    assert time.monotonic() - started < 1.0 + LOOP_SLACK
    assert await read_key(client, reg.key) is None


async def test_a_lost_health_stream_deregisters_after_the_grace(
    client: EtcdClient, service: str
) -> None:
    async with health_server() as server:
        port = server.port
        reg = Registrar(client, service, server.address, health_check="", health_grace=0.3)
        async with reg:
            lease = reg.lease_id
            await server.server.stop(None)
            # The server cannot be reached: once the grace is over, it counts as not serving.
            await eventually(lambda: read_key(client, reg.key), lambda found: found is None)
            assert reg.state is RegistrarState.UNHEALTHY
            assert reg.statistics().health == "UNREACHABLE"
            # Back on the same address: the health stream reconnects, the key is written again.
            async with health_server(port):
                with anyio.fail_after(15):
                    await reg.wait_registered()
                found = await read_key(client, reg.key)
                assert found is not None and found[1] == lease
            stats = reg.statistics()
            assert stats.health_deregistrations == 1 and stats.health_streams >= 2, stats


async def test_a_health_stream_back_within_the_grace_keeps_the_key(
    client: EtcdClient, service: str
) -> None:
    async with health_server() as server:
        port = server.port
        reg = Registrar(client, service, server.address, health_check="", health_grace=60)
        async with reg:
            written = await mod_revision(client, reg.key)
            await server.server.stop(None)
            await until(lambda: reg.statistics().health_streams >= 2)
            async with health_server(port) as again:
                # The key was neither deleted nor written again meanwhile.
                assert await mod_revision(client, reg.key) == written
                assert reg.registered and reg.statistics().health_deregistrations == 0
                # The new stream follows the new server: its word counts at once.
                await again.health.set("", NOT_SERVING)
                await eventually(lambda: read_key(client, reg.key), lambda found: found is None)
                assert reg.statistics().health_deregistrations == 1


async def test_health_channel_is_the_callers(client: EtcdClient, service: str) -> None:
    async with health_server() as server:
        channel = grpc.aio.insecure_channel(server.address)
        try:
            reg = Registrar(client, service, "10.0.8.1:1", health_check="", health_channel=channel)
            async with reg:
                # The advertised address need not be the one asked: the channel says where.
                assert reg.registered and reg.statistics().health == "SERVING"
            # Still open: the Registrar closes only the channels it made.
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == SERVING
        finally:
            await channel.close()


async def test_health_arguments_are_checked(client: EtcdClient, service: str) -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(ValueError, match="health_channel= is for health_check="):
            Registrar(client, service, "10.0.8.2:1", health_channel=channel)
    finally:
        await channel.close()
    with pytest.raises(TypeError, match="service name"):
        Registrar(client, service, "10.0.8.2:1", health_check=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="health_grace"):
        Registrar(client, service, "10.0.8.2:1", health_check="", health_grace=-1)
