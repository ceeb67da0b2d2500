"""Locality: calls stay in the client's zone, spill over when too few of its endpoints are
healthy, and come back; with subsetting, the subset is drawn within the zone."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from aiodiscovery import BalancedChannel, Endpoint, EndpointManager, EtcdClient, resolve
from aiodiscovery._selection.locality import endpoint_zone

from .helpers import until
from .servers import EchoServer, method

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def zoned(
    client: EtcdClient, service: str, zones: dict[str, object]
) -> AsyncIterator[dict[str, EchoServer]]:
    """An echo server per name, registered under the service with the given metadata."""
    em = EndpointManager(client, service)
    async with contextlib.AsyncExitStack() as stack:
        servers = {}
        for name, metadata in zones.items():
            server = await stack.enter_async_context(EchoServer(name))
            await em.add_endpoint(f"{service}/{name}", Endpoint(server.address, metadata))
            servers[name] = server
        yield servers


def held(channel: BalancedChannel, servers: dict[str, EchoServer]) -> set[str]:
    by_address = {s.address: name for name, s in servers.items()}
    stats = channel.statistics().subchannels
    return {by_address[a] for a, s in stats.items() if not s.draining}


async def answered_by(channel: BalancedChannel, calls: int = 12) -> set[str]:
    unary = channel.unary_unary(method("Unary"))
    return {(await unary(b"x", timeout=5)).decode().split(":")[0] for _ in range(calls)}


def spilling(channel: BalancedChannel) -> bool:
    selection = channel.statistics().selection
    assert selection is not None
    return selection.spilling


def test_the_zone_is_read_from_either_metadata_form() -> None:
    assert endpoint_zone("zone=eu-west-1a") == "eu-west-1a"
    assert endpoint_zone("weight=2&zone=eu%2Dwest&zone=second") == "eu-west"
    assert endpoint_zone({"zone": "a", "weight": 2}) == "a"
    # One rule for every attribute: a JSON number reads as its text, as a weight does.
    assert endpoint_zone({"zone": 3}) == "3"
    assert endpoint_zone("weight=2") is None
    assert endpoint_zone(None) is None
    assert endpoint_zone(["zone=a"]) is None


async def test_calls_stay_in_the_zone_spill_over_and_come_back(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    zones = {"a1": "zone=a", "a2": {"zone": "a"}, "b1": "weight=1&zone=b", "b2": "zone=b"}
    async with zoned(client, service, zones) as servers:
        channel = await resolve(client, service, zone="a")
        async with channel:
            assert held(channel, servers) == {"a1", "a2"}
            await until(lambda: channel.get_state() is grpc.ChannelConnectivity.READY)
            assert await answered_by(channel) == {"a1", "a2"}
            selection = channel.statistics().selection
            assert selection is not None and (selection.zone, selection.local) == ("a", 2)
            # One of two down is not below the threshold (0.5): calls stay in the zone.
            await servers["a1"].stop(None)
            await until(
                lambda: channel.statistics().subchannels[servers["a1"].address].state != "READY"
            )
            assert not spilling(channel)
            assert await answered_by(channel) == {"a2"}
            # Both down: the other zone takes the calls.
            with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
                await servers["a2"].stop(None)
                await until(lambda: spilling(channel))
                await until(lambda: {"b1", "b2"} <= held(channel, servers))
                await until(lambda: channel.statistics().by_state().get("READY", 0) == 2)
                assert await answered_by(channel) == {"b1", "b2"}
            assert any("spill over" in r.getMessage() for r in caplog.records)
            # A healthy zone again: calls come back and the other zone's connections drain.
            async with EchoServer("a3") as a3:
                em = EndpointManager(client, service)
                await em.add_endpoint(f"{service}/a3", Endpoint(a3.address, "zone=a"))
                await em.delete_endpoint(f"{service}/a1")
                await em.delete_endpoint(f"{service}/a2")
                await until(lambda: not spilling(channel))
                stats = channel.statistics()
                assert stats.selection is not None and stats.selection.spills == 1
                await until(lambda: set(channel.statistics().subchannels) == {a3.address})
                assert await answered_by(channel) == {"a3"}


async def test_a_zone_without_endpoints_uses_the_others_at_once(
    client: EtcdClient, service: str
) -> None:
    async with zoned(client, service, {"b1": "zone=b", "n1": None}) as servers:
        async with await resolve(client, service, zone="a") as channel:
            assert held(channel, servers) == {"b1", "n1"}
            assert spilling(channel)
            assert await answered_by(channel) == {"b1", "n1"}


async def test_the_subset_is_drawn_within_the_zone(client: EtcdClient, service: str) -> None:
    zones: dict[str, object] = {f"a{i}": "zone=a" for i in range(4)}
    zones |= {f"b{i}": "zone=b" for i in range(4)}
    async with zoned(client, service, zones) as servers:
        async with await resolve(client, service, zone="b", subset_size=2, client_id=1) as channel:
            chosen = held(channel, servers)
            assert 2 <= len(chosen) <= 3 and all(name.startswith("b") for name in chosen)
            selection = channel.statistics().selection
            assert selection is not None and (selection.endpoints, selection.local) == (8, 4)
            await until(lambda: channel.get_state() is grpc.ChannelConnectivity.READY)
            assert await answered_by(channel) <= chosen


async def test_the_zone_replaces_its_own_first_and_spilling_keeps_the_size(
    client: EtcdClient, service: str
) -> None:
    zones: dict[str, object] = {f"a{i}": "zone=a" for i in range(4)}
    zones |= {f"b{i}": "zone=b" for i in range(4)}
    async with zoned(client, service, zones) as servers:
        async with await resolve(client, service, zone="b", subset_size=2, client_id=1) as channel:

            def ready() -> set[str]:
                by_address = {s.address: name for name, s in servers.items()}
                stats = channel.statistics().subchannels
                return {
                    by_address[a] for a, s in stats.items() if s.state == "READY" and not s.draining
                }

            await until(lambda: len(ready()) == 2)
            first = held(channel, servers)
            assert len(first) == 2 and all(name.startswith("b") for name in first)
            # One of the subset down: another of the zone stands in, no other zone is used.
            await servers[sorted(first)[0]].stop(None)
            await until(lambda: len(ready()) == 2 and sorted(first)[0] not in ready())
            assert not spilling(channel)
            assert len(await answered_by(channel)) == 2
            assert all(name.startswith("b") for name in await answered_by(channel))
            # The whole zone down: two of the other zone take the calls, not a subset more.
            for name in ("b0", "b1", "b2", "b3"):
                await servers[name].stop(None)

            def spilled() -> bool:
                channel.get_state(try_to_connect=True)
                return spilling(channel) and len(ready()) == 2

            await until(spilled, timeout=20)
            assert {name[0] for name in ready()} == {"a"}
            answered = await answered_by(channel)
            assert len(answered) == 2 and all(name.startswith("a") for name in answered)
