"""The registry as an xDS control plane, with grpc core as the client.

Every client here is grpcio's own ``xds:///`` channel (grpc core's xDS resolver and balancers),
fed by :class:`XdsServer` from a real etcd in which real grpc.aio servers registered themselves
with :class:`Registrar`; one test's client is a process of its own, served by the
``aiodiscovery xds-server`` command.
"""

from __future__ import annotations

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

from aiodiscovery import (
    BalancedChannel,
    Endpoint,
    EndpointSet,
    EtcdClient,
    OutlierDetection,
    Registrar,
    XdsPolicy,
    XdsServer,
    local_xds_server,
    resolve,
)
from aiodiscovery._xds.local import BOOTSTRAP_ENV, _claim_bootstrap
from aiodiscovery._xds.resources import build_assignment, build_cluster, build_route
from aiodiscovery.testing import EtcdServer

from .helpers import until
from .processes import Process, clean_env, cli_command, run, run_cli
from .servers import EchoServer, method

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("xds_child.py")


@contextlib.asynccontextmanager
async def echo_servers(count: int) -> AsyncIterator[list[EchoServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(EchoServer(f"s{i}")) for i in range(count)]


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
    await (await local_xds_server()).close()


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


def test_registry_data_grpc_would_refuse_is_left_out_and_named() -> None:
    endpoints = EndpointSet(
        {
            "svc/a": Endpoint("10.0.0.1:80", "zone=z1&weight=4294967295"),
            "svc/b": Endpoint("10.0.0.2:80", "zone=z2&weight=4294967295"),
            "svc/dup": Endpoint("10.0.0.1:80"),
            "svc/host": Endpoint("backend.example:80"),
            "svc/bad": Endpoint("unix:/tmp/x"),
            "svc/weight": Endpoint("10.0.0.3:80", "weight=0"),
            "svc/six": Endpoint("[::1]:81", "health=unhealthy"),
        },
        revision=7,
    )
    assignment = build_assignment("svc", endpoints, XdsPolicy())
    assert set(assignment.skipped) == {"svc/dup", "svc/host", "svc/bad", "svc/weight"}
    assert "another key" in assignment.skipped["svc/dup"]
    assert "host name" in assignment.skipped["svc/host"]
    assert assignment.endpoints == 3
    localities = {z.locality.zone: z for z in assignment.message.endpoints}
    # Locality weights never sum past what a client accepts (2**32 - 1).
    assert sum(z.load_balancing_weight.value for z in localities.values()) <= 2**32 - 1
    assert localities[""].lb_endpoints[0].health_status == 2  # UNHEALTHY


def test_policies_become_the_cluster_and_the_route() -> None:
    policy = XdsPolicy(
        lb_policy="ring_hash",
        ring_size=(64, 4096),
        outlier_detection=OutlierDetection(success_rate_stdev_factor=1.5),
        retry_on=("unavailable",),
        num_retries=3,
        max_requests=100,
    )
    cluster = build_cluster("svc", policy)
    assert cluster.ring_hash_lb_config.minimum_ring_size.value == 64
    assert cluster.outlier_detection.success_rate_stdev_factor.value == 1500
    assert cluster.circuit_breakers.thresholds[0].max_requests.value == 100
    route = build_route("svc", policy).virtual_hosts[0].routes[0].route
    assert (
        route.retry_policy.retry_on == "unavailable" and route.retry_policy.num_retries.value == 3
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lb_policy": "fastest"}, "lb_policy"),
        ({"ring_size": (10, 5)}, "ring_size"),
        ({"retry_on": "unavailable"}, "tuple"),
        ({"retry_on": ("not-found",)}, "retry_on"),
        ({"num_retries": 9}, "num_retries"),
        ({"retry_backoff": (1.0, 0.5)}, "retry_backoff"),
        ({"max_requests": 0}, "max_requests"),
    ],
)
def test_a_policy_a_client_would_refuse_is_an_error_at_once(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        XdsPolicy(**kwargs)  # type: ignore[arg-type]


async def test_the_pools_own_options_are_refused_with_the_xds_engine(
    client: EtcdClient, service: str
) -> None:
    with pytest.raises(ValueError, match="subset_size, zone: only the Python pool"):
        await resolve(client, service, engine="xds", subset_size=3, zone="a")
    with pytest.raises(ValueError, match="policy 'p2c'"):
        await resolve(client, service, engine="xds", policy="p2c")
    with pytest.raises(ValueError, match="engine 'grpc'"):
        await resolve(client, service, engine="grpc")


def test_another_control_plane_in_the_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, '{"xds_servers": [{"server_uri": "127.0.0.1:1"}]}')
    with pytest.raises(RuntimeError, match="once per process"):
        _claim_bootstrap('{"xds_servers": []}')


async def test_the_standalone_server_serves_a_client_in_another_process(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    async with echo_servers(2) as servers, registered(client, service, servers):
        server = Process(
            cli_command("--endpoints", etcd.url, "xds-server", "--listen", "127.0.0.1:0")
        )
        with server:
            line = await anyio.to_thread.run_sync(server.expect, r"serving ADS on (\S+)")
            bootstrap = await anyio.to_thread.run_sync(server.readline)
            assert json.loads(bootstrap)["xds_servers"][0]["server_uri"] == line[1]
            env = clean_env(**{BOOTSTRAP_ENV: bootstrap})
            with Process([sys.executable, str(CHILD), service, "2", "500"], env=env) as child:
                code = await anyio.to_thread.run_sync(child.wait, 60)
                assert code == 0, child.stderr
            assert set(json.loads(child.stdout)) == {"s0", "s1"}
            server.signal(2)
            assert await anyio.to_thread.run_sync(server.wait) == 130
    assert re.search(r"127\.0\.0\.1:\d+", line[1])


_WITHOUT_EXTRA = """
import asyncio, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("envoy", "xds", "udpa", "validate"):
            raise ImportError(f"no module named {name!r}")

sys.meta_path.insert(0, Blocked())
import aiodiscovery
assert not [m for m in sys.modules if m.split(".")[0] in ("envoy", "xds", "udpa")]
try:
    asyncio.run(aiodiscovery.XdsServer().start())
except RuntimeError as exc:
    print(exc)
"""


def test_without_the_extra_nothing_of_it_is_imported_and_starting_says_what_to_install() -> None:
    result = run([sys.executable, "-c", _WITHOUT_EXTRA])
    assert result.returncode == 0, result.stderr
    assert "pip install 'aiodiscovery[xds]'" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "0.0.0.0:18000"], "not a loopback address: add --allow-remote"),
        (["--listen", "localhost"], "expected HOST:PORT"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--retry-on", "not-found"], "retry_on"),
    ],
)
def test_xds_server_usage_errors(args: list[str], message: str) -> None:
    result = run_cli("--endpoints", "http://127.0.0.1:1", "xds-server", *args)
    assert result.returncode == 2
    assert message in result.stderr
