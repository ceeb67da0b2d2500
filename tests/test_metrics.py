"""OpenTelemetry metrics, read by the SDK's in-memory reader; and nothing at all without the API."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from aiodiscovery import Endpoint, EndpointManager, EtcdClient, Registrar, Watcher, resolve
from aiodiscovery._metrics import INSTRUMENTS
from aiodiscovery.testing import EtcdServer, free_port

from .faulty_servers import FaultyServer
from .servers import method

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def reader() -> Iterator[InMemoryMetricReader]:
    # The global provider can be set once per process; instruments made earlier on the API's
    # proxy provider (by any client of the session) are bound to it then.
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    yield reader


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
    """Every data point collected now, by instrument name."""
    found: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "aiodiscovery":
                continue
            for metric in scope.metrics:
                found[metric.name] = [
                    (p.value, dict(p.attributes or {})) for p in metric.data.data_points
                ]
    return found


def value(found: dict[str, list[tuple[Any, dict[str, Any]]]], name: str, **attrs: Any) -> Any:
    matches = [v for v, a in found.get(name, []) if all(a.get(k) == x for k, x in attrs.items())]
    assert len(matches) == 1, (name, attrs, found.get(name))
    return matches[0]


async def test_watches_registrars_and_the_client_are_reported(
    reader: InMemoryMetricReader, client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/a", Endpoint(f"127.0.0.1:{free_port()}"))
    async with (
        Watcher(client, service) as watcher,
        Registrar(client, service, f"127.0.0.1:{free_port()}", ttl=5) as reg,
    ):
        while len(watcher.snapshot) != 2:
            await watcher.wait_for_change()
        found = points(reader)
        prefix = f"{service}/"
        assert value(found, "aiodiscovery.watch.endpoints", **{"aiodiscovery.target": prefix}) == 2
        assert value(found, "aiodiscovery.watch.restarts", **{"aiodiscovery.target": prefix}) == 0
        assert (
            value(
                found,
                "aiodiscovery.registrar.state",
                **{"aiodiscovery.target": prefix, "aiodiscovery.registrar.state": "registered"},
            )
            == 1
        )
        assert reg.registered
        urls = ",".join(client.urls)
        assert (
            value(found, "aiodiscovery.etcd.failovers", **{"aiodiscovery.etcd.endpoints": urls})
            == 0
        )
        assert (
            value(
                found,
                "aiodiscovery.etcd.member.active",
                **{"aiodiscovery.etcd.member": client.members.active.url},
            )
            == 1
        )
    # Closed registrars and watches are no longer reported.
    found = points(reader)
    prefix = f"{service}/"
    assert all(
        a.get("aiodiscovery.target") != prefix
        for _, a in found.get("aiodiscovery.watch.endpoints", [])
    )
    assert all(
        a.get("aiodiscovery.target") != prefix
        for _, a in found.get("aiodiscovery.registrar.state", [])
    )


def test_names_follow_the_conventions() -> None:
    # Lower-case, dot-separated, under the library's namespace; the target is an attribute.
    names = [i.name for i in INSTRUMENTS]
    assert len(names) == len(set(names))
    assert all(n.startswith("aiodiscovery.") and n == n.lower() and " " not in n for n in names)
    assert all(i.unit.startswith("{") for i in INSTRUMENTS)


def test_without_opentelemetry_nothing_is_imported(etcd: EtcdServer) -> None:
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class NoOpenTelemetry(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opentelemetry":
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        import anyio, aiodiscovery

        async def main():
            client = await aiodiscovery.connect({etcd.url!r})
            async with client, aiodiscovery.Watcher(client, "nometrics/svc"):
                pass

        anyio.run(main)
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert loaded == [], loaded
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


async def test_pools_report_picks_failures_and_subchannels(
    reader: InMemoryMetricReader, client: EtcdClient, service: str
) -> None:
    async with FaultyServer("m1") as server:
        await EndpointManager(client, service).add_endpoint(
            f"{service}/m1", Endpoint(server.address)
        )
        async with await resolve(client, service, options=[("grpc.enable_retries", 0)]) as channel:
            call = channel.unary_unary(method("Unary"))
            assert await call(b"x", timeout=5) == b"m1:x"
            server.fail_with = grpc.StatusCode.INTERNAL
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"y", timeout=5)
            found = points(reader)
            endpoint = {
                "aiodiscovery.target": f"{service}/",
                "server.address": "127.0.0.1",
                "server.port": server.port,
                "rpc.system": "grpc",
            }
            assert value(found, "aiodiscovery.pool.picks", **endpoint) == 2
            assert value(found, "aiodiscovery.pool.call_failures", **endpoint) == 1
            assert value(found, "aiodiscovery.pool.calls_in_flight", **endpoint) == 0
            state = {"aiodiscovery.target": f"{service}/", "aiodiscovery.subchannel.state": "READY"}
            assert value(found, "aiodiscovery.pool.subchannels", **state) == 1
            assert channel.statistics().subchannels[server.address].failures == 1
    # A closed pool is no longer reported.
    pools = points(reader).get("aiodiscovery.pool.picks", [])
    assert all(a.get("aiodiscovery.target") != f"{service}/" for _, a in pools)


async def test_weighted_policies_report_each_endpoint_s_weight(
    reader: InMemoryMetricReader, client: EtcdClient, service: str
) -> None:
    async with FaultyServer("w1") as server:
        await EndpointManager(client, service).add_endpoint(
            f"{service}/w1", Endpoint.with_attributes(server.address, weight=3)
        )
        async with await resolve(client, service, policy="weighted") as channel:
            assert await channel.unary_unary(method("Unary"))(b"x", timeout=5) == b"w1:x"
            endpoint = {"aiodiscovery.target": f"{service}/", "server.port": server.port}
            assert value(points(reader), "aiodiscovery.pool.endpoint_weight", **endpoint) == 3
            assert channel.statistics().subchannels[server.address].weight == 3.0
        # Round robin has no weights: no series.
        async with await resolve(client, service) as channel:
            await channel.unary_unary(method("Unary"))(b"x", timeout=5)
            weights = points(reader).get("aiodiscovery.pool.endpoint_weight", [])
            assert all(a.get("aiodiscovery.target") != f"{service}/" for _, a in weights)
            assert channel.statistics().subchannels[server.address].weight is None
