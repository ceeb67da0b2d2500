"""Deterministic subsetting: the picker logic (spread, churn, incremental upkeep), then pools that
hold a subset of a real service."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, EndpointSet, EtcdClient, resolve
from aiodiscovery._codec.endpointset import ChangeLog
from aiodiscovery._selection.subset import Ring, client_point, subset_bounds

from .helpers import until
from .servers import EchoServer

SERVICE = "fleet/subset"


def subsets(clients: int, servers: list[str], size: int) -> list[set[str]]:
    result = []
    for client_id in range(clients):
        ring = Ring(size, client_point(client_id, SERVICE), SERVICE)
        ring.reset(servers)
        result.append(set(ring.subset()))
    return result


SERVERS = [f"10.1.{i // 256}.{i % 256}:50051" for i in range(1000)]


def test_many_clients_spread_evenly_over_the_servers() -> None:
    chosen = subsets(300, SERVERS, 32)
    per_server = Counter(address for subset in chosen for address in subset)
    low, high = subset_bounds(32)
    assert all(low <= len(subset) <= high for subset in chosen)
    # 300 x 32 / 1,000 = 9.6 connections per server: every server has 9 or 10, give or take 1.
    assert len(per_server) == 1000
    assert min(per_server.values()) >= 8 and max(per_server.values()) <= 12
    assert sum(len(s) for s in chosen) / 300 == pytest.approx(32, rel=0.05)


def test_servers_leaving_move_only_their_own_connections() -> None:
    before = subsets(300, SERVERS, 32)
    leavers = set(random.Random(1).sample(SERVERS, 10))
    after = subsets(300, [s for s in SERVERS if s not in leavers], 32)
    for old, new in zip(before, after, strict=True):
        # No client lets go of a server that stayed.
        assert old - leavers <= new
    # Arcs grow by 1/990 of their length: the clients that lost a leaver's connection get about
    # as many new ones in all, not one more each.
    lost = sum(len(old & leavers) for old in before)
    gained = sum(len(new - old) for old, new in zip(before, after, strict=True))
    assert lost > 0 and gained <= 1.2 * lost


def test_the_ring_kept_up_to_date_matches_one_built_afresh() -> None:
    rng = random.Random(7)
    ring = Ring(8, client_point(3, SERVICE), SERVICE)
    present: set[str] = set()
    ring.reset(present)
    for step in range(3000):
        if present and rng.random() < 0.45:
            address = rng.choice(sorted(present))
            present.discard(address)
            ring.discard(address)
        else:
            address = f"127.0.{step // 256}.{step % 256}:1"
            present.add(address)
            ring.add(address)
        if step % 97 == 0:
            fresh = Ring(8, client_point(3, SERVICE), SERVICE)
            fresh.reset(present)
            assert ring.subset() == fresh.subset()
    assert len(present) > 100


def test_client_positions_are_stable_and_integers_spread() -> None:
    assert client_point(5, SERVICE) == client_point(5, SERVICE)
    assert client_point("host/1", SERVICE) != client_point("host/2", SERVICE)
    assert client_point(5, SERVICE) != client_point(5, "other/service")
    # Eight consecutive instance numbers: one in each eighth of the ring.
    eighths = {int(client_point(i, SERVICE) * 8) for i in range(8, 16)}
    assert len(eighths) == 8


def test_a_set_from_a_watch_tells_what_changed() -> None:
    log = ChangeLog(limit=3)
    base = EndpointSet._of(EndpointSet()._entries, 1, log, log.seq)
    for key in ("a", "b", "c"):
        log.record((key,))
    later = EndpointSet._of(base._entries, 4, log, log.seq)
    assert later.changed_since(base) == {"a", "b", "c"}
    log.record(("d",))
    newest = EndpointSet._of(base._entries, 5, log, log.seq)
    # Four batches ago is more than this log remembers: the caller compares in full.
    assert newest.changed_since(base) is None
    assert newest.changed_since(later) == {"d"}
    assert EndpointSet().changed_since(base) is None


def test_subsetting_options_are_checked() -> None:
    with pytest.raises(ValueError, match="subset_size"):
        aiodiscovery.BalancedChannel(None, "svc", subset_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spill_threshold"):
        aiodiscovery.BalancedChannel(None, "svc", zone="a", spill_threshold=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="client_id"):
        aiodiscovery.BalancedChannel(None, "svc", subset_size=2, client_id=1.5)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def echo_servers(count: int) -> AsyncIterator[list[EchoServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(EchoServer(f"s{i}")) for i in range(count)]


def held(channel: aiodiscovery.BalancedChannel) -> set[str]:
    return {a for a, s in channel.statistics().subchannels.items() if not s.draining}


@pytest.mark.anyio
async def test_a_pool_holds_its_subset_and_replaces_a_leaver(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(6) as servers:
        em = EndpointManager(client, service)
        for server in servers:
            await em.add_endpoint(f"{service}/{server.name}", Endpoint(server.address))
        async with await resolve(client, service, subset_size=2, client_id=0) as channel:
            selection = channel.statistics().selection
            assert selection is not None and selection.endpoints == 6
            assert selection.subset is not None and 2 <= len(selection.subset) <= 3
            assert held(channel) == set(selection.subset)
            channel.get_state(try_to_connect=True)
            await until(
                lambda: channel.statistics().by_state().get("READY", 0) == len(held(channel))
            )
            call = channel.unary_unary("/test.Echo/Unary")
            replies = {(await call(b"x", timeout=5)).split(b":")[0].decode() for _ in range(12)}
            names = {s.name for s in servers if s.address in held(channel)}
            assert replies == names
            # One member leaves the registry: only it is replaced.
            before = held(channel)
            leaver = sorted(before)[0]
            name = next(s.name for s in servers if s.address == leaver)
            await em.delete_endpoint(f"{service}/{name}")
            await until(lambda: leaver not in held(channel) and len(held(channel)) >= 2)
            assert before - {leaver} <= held(channel)
            stats = channel.statistics().selection
            assert stats is not None and stats.endpoints == 5 and stats.client_id == 0


@pytest.mark.anyio
async def test_without_a_client_id_the_process_has_one(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    for i in range(4):
        await em.add_endpoint(f"{service}/e{i}", Endpoint(f"127.0.0.1:{40000 + i}"))
    async with (
        await resolve(client, service, subset_size=1) as first,
        await resolve(client, service, subset_size=1) as second,
    ):
        one, two = first.statistics().selection, second.statistics().selection
        assert one is not None and two is not None
        assert isinstance(one.client_id, str) and one.client_id == two.client_id
        assert one.subset == two.subset and one.subset is not None and len(one.subset) == 1
