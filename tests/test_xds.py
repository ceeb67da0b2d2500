"""The registry as an xDS control plane, with grpc core as the client.

Every client here is grpcio's own ``xds:///`` channel (grpc core's xDS resolver and balancers),
fed by :class:`XdsServer` from a real etcd in which real grpc.aio servers registered themselves
with :class:`Registrar`; one test's client is a process of its own, served by the
``aiodiscovery xds-server`` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import grpc
import grpc.aio
import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from aiodiscovery import (
    BalancedChannel,
    Endpoint,
    EtcdClient,
    OutlierDetection,
    Registrar,
    XdsPolicy,
    XdsServer,
    local_xds_server,
    resolve,
)
from aiodiscovery._xds.local import BOOTSTRAP_ENV, _Local
from aiodiscovery._xds.resources import LISTENER
from aiodiscovery.testing import EtcdServer, TLSFiles, free_port

from .helpers import eventually, until
from .processes import Process, clean_env, cli_command, run
from .servers import EchoServer, method
from .test_pool import echo_servers

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("xds_child.py")


@contextlib.asynccontextmanager
async def registered(
    client: EtcdClient, service: str, servers: Sequence[EchoServer], metadata: object = None
) -> AsyncIterator[list[Registrar]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                Registrar(client, service, s.address, metadata=metadata, ttl=5)
            )
            for s in servers
        ]


async def calls(channel: grpc.aio.Channel, count: int) -> Counter[str]:
    unary = channel.unary_unary(method("Unary"))
    seen: Counter[str] = Counter()
    for _ in range(count):
        reply = await unary(b"x", wait_for_ready=True, timeout=10)
        seen[reply.decode().partition(":")[0]] += 1
    return seen


def acked_everywhere(server: XdsServer, version: int) -> bool:
    """Whether every client stream accepted an assignment at least as new as ``version``."""
    streams = server.statistics().streams
    return bool(streams) and all(
        int(s.acked.get("ClusterLoadAssignment", "0")) >= version for s in streams
    )


@pytest.fixture(scope="module", autouse=True)
async def close_the_local_server() -> AsyncIterator[None]:
    yield
    if _Local.server is not None:
        await _Local.server.close()


async def test_the_xds_channel_reaches_every_registered_endpoint(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers):
        channel = await resolve(client, service, engine="xds")
        async with channel:
            # grpc's own channel, balanced by grpc core: no Python pool in between.
            assert not isinstance(channel, BalancedChannel)
            # Until every connection is up, round robin skips those still connecting.
            warm: Counter[str] = Counter()
            while len(warm) < 3:
                warm += await calls(channel, 1)
            seen = await calls(channel, 30)
    # round_robin over three READY endpoints: each takes every third call.
    assert seen == {"s0": 10, "s1": 10, "s2": 10}
    stats = (await local_xds_server()).statistics()
    assert stats.nacks == 0 and stats.acks >= 4


async def test_registrations_and_deregistrations_are_followed(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers[:2]):
        channel = await resolve(client, service, engine="xds")
        async with channel:
            assert set(await calls(channel, 10)) == {"s0", "s1"}
            newcomer = servers[2]
            started = time.monotonic()
            async with Registrar(client, service, newcomer.address, ttl=5):
                while "s2" not in await calls(channel, 1):
                    pass
                joined = time.monotonic() - started
                xds = await local_xds_server()
                version = xds.statistics().version
            left_at = time.monotonic()
            await until(lambda: acked_everywhere(xds, version + 1))
            # grpc core applies an update it accepted to its picker a moment after the ACK:
            # wait for a round of picks without the newcomer, then none may reach it.
            await eventually(lambda: calls(channel, 10), lambda seen: "s2" not in seen)
            left = time.monotonic() - left_at
            before = newcomer.calls
            assert set(await calls(channel, 20)) == {"s0", "s1"}
            assert newcomer.calls == before
    # The issue asks for one second; on a loaded machine the test only reports the figures
    # (benchmarks/bench_xds.py measures them) and fails past a generous bound.
    print(
        f"registration followed in {joined * 1000:.0f} ms, deregistration in {left * 1000:.0f} ms"
    )
    assert joined < 5 and left < 5


async def test_a_graceful_deregistration_fails_no_call(client: EtcdClient, service: str) -> None:
    failures: list[BaseException] = []
    replies: Counter[str] = Counter()
    async with echo_servers(3) as servers:
        leaving = servers[0]
        async with registered(client, service, servers[1:]):
            channel = await resolve(client, service, engine="xds")
            async with channel:
                unary = channel.unary_unary(method("Unary"))
                stop = anyio.Event()

                async def caller() -> None:
                    for _ in range(5000):
                        if stop.is_set():
                            return
                        try:
                            reply = await unary(b"x", timeout=10)
                        except grpc.aio.AioRpcError as exc:
                            failures.append(exc)
                        else:
                            replies[reply.decode().partition(":")[0]] += 1

                xds = await local_xds_server()
                async with anyio.create_task_group() as callers:
                    async with Registrar(client, service, leaving.address, ttl=5):
                        for _ in range(4):
                            callers.start_soon(caller)
                        await until(lambda: leaving.calls >= 20)
                        version = xds.statistics().version
                    # Deregistered; the server keeps serving until every client has moved
                    # away, then stops with a grace period for the calls it still has.
                    await until(lambda: acked_everywhere(xds, version + 1))
                    await leaving.stop(5)
                    served = sum(replies.values())
                    await until(lambda: sum(replies.values()) >= served + 200)
                    stop.set()
    assert failures == []
    assert replies["s0"] >= 20 and replies["s1"] > 0 and replies["s2"] > 0


async def test_a_nacked_update_is_reported_and_the_last_good_one_kept(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers[:2]):
        channel = await resolve(client, service, engine="xds")
        async with channel:
            assert set(await calls(channel, 10)) == {"s0", "s1"}
            xds = await local_xds_server()
            before = xds.statistics().nacks
            # Maglev is Envoy's; grpc core rejects a Cluster asking for it.
            with caplog.at_level(logging.WARNING, "aiodiscovery.xds"):
                xds.serve(service, client=client, policy=XdsPolicy(lb_policy="maglev"))
                await until(lambda: xds.statistics().nacks > before)
            nack = xds.statistics().last_nack
            assert nack is not None and nack.type == "Cluster"
            assert "LB policy is not supported" in nack.error
            assert nack.kept != "" and nack.kept != nack.version
            assert any("rejected Cluster" in r.getMessage() for r in caplog.records)
            # The client keeps the last good cluster; endpoint updates still flow.
            assert set(await calls(channel, 10)) == {"s0", "s1"}
            async with Registrar(client, service, servers[2].address, ttl=5):
                while "s2" not in await calls(channel, 1):
                    pass
            # A good policy again is accepted.
            version = xds.statistics().version
            xds.serve(service, client=client)
            await until(
                lambda: all(
                    int(s.acked.get("Cluster", "0")) > version for s in xds.statistics().streams
                )
            )


async def test_health_zone_and_weight_attributes_reach_grpc(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(3) as servers, contextlib.AsyncExitStack() as stack:
        for server, attributes in zip(
            servers,
            [
                {"zone": "a", "weight": 3},
                {"zone": "b", "weight": 1},
                {"zone": "a", "health": "draining"},
            ],
            strict=True,
        ):
            metadata = Endpoint.with_attributes(server.address, **attributes).metadata
            await stack.enter_async_context(
                Registrar(client, service, server.address, metadata=metadata, ttl=5)
            )
        channel = await resolve(client, service, engine="xds")
        async with channel:
            seen = await calls(channel, 400)
    # The draining endpoint gets nothing; zone a (weight 3) takes about three calls in four.
    assert seen["s2"] == 0
    assert 0.6 < seen["s0"] / 400 < 0.9, seen


async def test_the_pools_own_options_are_refused_with_the_xds_engine(
    client: EtcdClient, service: str
) -> None:
    with pytest.raises(ValueError, match="subset_size, zone: only the Python pool"):
        await resolve(client, service, engine="xds", subset_size=3, zone="a")
    with pytest.raises(ValueError, match="policy 'p2c'"):
        await resolve(client, service, engine="xds", policy="p2c")
    with pytest.raises(ValueError, match="engine 'grpc'"):
        await resolve(client, service, engine="grpc")


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_the_standalone_server_serves_a_client_in_another_process(
    etcd: EtcdServer, client: EtcdClient, service: str, tmp_path: Path, tls: bool
) -> None:
    options = ["--listen", "127.0.0.1:0"]
    if tls:
        files = TLSFiles.generate(tmp_path / "pki")
        options += ["--tls-cert", str(files.server_cert_path), "--tls-key"]
        options += [str(files.server_key_path), "--tls-ca", str(files.ca_path)]
    async with echo_servers(2) as servers, registered(client, service, servers):
        server = Process(cli_command("--endpoints", etcd.url, "xds-server", *options))
        with server:
            line = await anyio.to_thread.run_sync(server.expect, r"serving ADS on (\S+)")
            bootstrap = await anyio.to_thread.run_sync(server.readline)
            plane = json.loads(bootstrap)["xds_servers"][0]
            assert plane["server_uri"] == line[1]
            assert plane["channel_creds"][0]["type"] == ("tls" if tls else "insecure")
            env = clean_env(**{BOOTSTRAP_ENV: bootstrap})
            with Process([sys.executable, str(CHILD), service, "2", "500"], env=env) as child:
                code = await anyio.to_thread.run_sync(child.wait, 60)
                assert code == 0, child.stderr
            assert set(json.loads(child.stdout)) == {"s0", "s1"}
            server.signal(2)
            assert await anyio.to_thread.run_sync(server.wait) == 130
    assert re.search(r"127\.0\.0\.1:\d+", line[1])


async def test_two_services_opened_at_once_share_one_in_process_server(
    client: EtcdClient, service: str
) -> None:
    other = f"{service}-other"
    async with echo_servers(2) as servers, contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(registered(client, service, servers[:1]))
        await stack.enter_async_context(registered(client, other, servers[1:]))
        if _Local.server is not None:
            # From scratch: both channels race to start the server.
            await _Local.server.close()
        channels: dict[str, grpc.aio.Channel] = {}

        async def open_channel(name: str) -> None:
            channels[name] = await resolve(client, name, engine="xds")

        async with anyio.create_task_group() as group:
            group.start_soon(open_channel, service)
            group.start_soon(open_channel, other)
        for channel in channels.values():
            await stack.enter_async_context(channel)
        assert set(await calls(channels[service], 5)) == {"s0"}
        assert set(await calls(channels[other], 5)) == {"s1"}
        assert set((await local_xds_server()).statistics().services) == {service, other}


@pytest.mark.parametrize("lb_policy", ["round_robin", "ring_hash", "pick_first"])
async def test_grpc_accepts_every_policy_it_implements_with_all_the_settings(
    client: EtcdClient, service: str, lb_policy: str
) -> None:
    policy = XdsPolicy(
        lb_policy=lb_policy,
        outlier_detection=OutlierDetection(enforcing_failure_percentage=100),
        retry_on=("unavailable", "resource-exhausted"),
        num_retries=2,
        max_requests=100,
    )
    weights = [1, 1, 8]
    async with echo_servers(3) as servers, contextlib.AsyncExitStack() as stack:
        for server, weight in zip(servers, weights, strict=True):
            metadata = Endpoint.with_attributes(server.address, weight=weight).metadata
            await stack.enter_async_context(
                Registrar(client, service, server.address, metadata=metadata, ttl=5)
            )
        xds = await local_xds_server()
        nacks = xds.statistics().nacks
        channel = await resolve(client, service, engine="xds", xds_policy=policy)
        async with channel:
            seen = await calls(channel, 200)
    assert xds.statistics().nacks == nacks
    if lb_policy == "pick_first":
        assert len(seen) == 1
    elif lb_policy == "ring_hash":
        # Each call hashes anew (no hash policy on the route); the ring honours the weights.
        assert seen["s2"] > 100, seen
    else:
        # Every endpoint of a locality gets its turn; round robin ignores endpoint weights.
        assert set(seen) == {"s0", "s1", "s2"}


async def listeners_answered(xds: XdsServer, names: list[str]) -> set[str]:
    """The Listeners in the first answer to a raw ADS stream that asks for ``names``."""
    async with grpc.aio.insecure_channel(xds.address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        stream = stub.StreamAggregatedResources()
        try:
            request = discovery_pb2.DiscoveryRequest(
                type_url=LISTENER, resource_names=names, node={"id": "raw"}
            )
            await stream.write(request)
            response = await asyncio.wait_for(stream.read(), 10)
        finally:
            stream.cancel()
    return {Listener.FromString(r.value).name for r in response.resources}


async def test_a_service_whose_registry_is_down_holds_up_no_other_on_the_same_stream(
    client: EtcdClient, service: str
) -> None:
    # grpcio keeps one xDS client (one ADS stream) per channel target, but grpc-go, grpc-java
    # and Envoy ask for every service on one stream: a raw ADS stream asks for two Listeners
    # here, one of them served from an etcd that does not answer.
    dead = EtcdClient(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    await dead.connect()
    stranded = f"{service}-stranded"
    try:
        async with XdsServer(client) as xds:
            xds.serve(stranded, client=dead)
            names = await listeners_answered(xds, [service, stranded])
            # Once the stranded service's first load has failed, the answer goes out without it.
            assert names == {service}
    finally:
        await dead.close()


_LEFT_OPEN = """
import asyncio, sys
import aiodiscovery

async def main(url, service):
    client = await aiodiscovery.connect(url)
    channel = await aiodiscovery.resolve(client, service, engine="xds")
    print(await channel.unary_unary("/test.Echo/Unary")(b"x", wait_for_ready=True, timeout=20))
    await channel.close()
    await client.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_an_in_process_server_never_closed_stops_with_its_event_loop(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    async with echo_servers(1) as servers, registered(client, service, servers):
        env = clean_env()
        env.pop(BOOTSTRAP_ENV, None)
        command = [sys.executable, "-c", _LEFT_OPEN, etcd.url, service]
        result = await anyio.to_thread.run_sync(lambda: run(command, env=env, timeout=60))
    assert result.returncode == 0, result.stderr
    assert "s0:x" in result.stdout
    assert "Event loop is closed" not in result.stderr
    assert "never awaited" not in result.stderr


async def test_clients_cannot_make_the_server_follow_services_without_bound(
    client: EtcdClient, service: str
) -> None:
    async with XdsServer(client, max_services=1) as xds:
        names = await listeners_answered(xds, [f"{service}-a", f"{service}-b"])
    assert len(names) == 1


async def test_a_bootstrap_naming_another_control_plane_is_never_replaced(
    etcd: EtcdServer, service: str
) -> None:
    foreign = '{"xds_servers": [{"server_uri": "127.0.0.1:1"}], "node": {"id": "theirs"}}'
    env = clean_env(**{BOOTSTRAP_ENV: foreign})
    command = [sys.executable, "-c", _LEFT_OPEN, etcd.url, service]
    result = await anyio.to_thread.run_sync(lambda: run(command, env=env, timeout=60))
    assert result.returncode == 1
    assert "RuntimeError: this process's gRPC xDS bootstrap already names another" in result.stderr
    assert "will not replace it" in result.stderr


async def test_ring_hash_on_a_header_keeps_each_key_on_one_endpoint(
    client: EtcdClient, service: str
) -> None:
    policy = XdsPolicy(lb_policy="ring_hash", hash_header="x-user")
    async with echo_servers(3) as servers, registered(client, service, servers):
        channel = await resolve(client, service, engine="xds", xds_policy=policy)
        async with channel:
            unary = channel.unary_unary(method("Unary"))

            async def home_of(user: str) -> str:
                metadata = (("x-user", user),)
                reply = await unary(b"x", metadata=metadata, wait_for_ready=True, timeout=10)
                return str(reply.decode().partition(":")[0])

            users = [f"user-{i}" for i in range(12)]
            # Ring hash connects to an endpoint when a key first lands on it and sends the call
            # to the next READY one meanwhile: let every home connect before judging.
            before: list[str] = []
            for _ in range(20):
                now = [await home_of(user) for user in users]
                if now == before:
                    break
                before = now
            homes: dict[str, set[str]] = {}
            for user in users:
                for _ in range(5):
                    homes.setdefault(user, set()).add(await home_of(user))
    assert all(len(home) == 1 for home in homes.values()), homes
    assert len(set().union(*homes.values())) > 1, homes


async def test_a_new_health_attribute_name_reaches_the_assignment_at_once(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(2) as servers, contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(registered(client, service, servers[:1]))
        metadata = Endpoint.with_attributes(servers[1].address, state="draining").metadata
        await stack.enter_async_context(
            Registrar(client, service, servers[1].address, metadata=metadata, ttl=5)
        )
        channel = await resolve(client, service, engine="xds")
        async with channel:
            seen: Counter[str] = Counter()
            while len(seen) < 2:
                seen += await calls(channel, 1)
            xds = await local_xds_server()
            version = xds.statistics().version
            xds.serve(service, client=client, policy=XdsPolicy(health_attribute="state"))
            await until(lambda: acked_everywhere(xds, version + 1))
            # The picker follows the accepted update a moment after the ACK (see above).
            await eventually(lambda: calls(channel, 10), lambda seen: set(seen) == {"s0"})
            assert set(await calls(channel, 20)) == {"s0"}
