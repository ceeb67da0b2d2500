"""Deterministic subsetting: the picker logic (spread, churn, incremental upkeep), then pools that
hold a subset of a real service."""

from __future__ import annotations

import contextlib
import functools
import random
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import grpc
import pytest
from aetcd import rpc

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, EndpointSet, EtcdClient, resolve
from aiodiscovery._codec.endpointset import ChangeLog
from aiodiscovery._etcd.kv import list_prefix, prefix_range_end
from aiodiscovery._naming.ranks import RankClaim, rank_prefix
from aiodiscovery._selection.subset import Ring, client_point
from aiodiscovery.testing import EtcdServer, TcpProxy

from .faulty_servers import NOT_SERVING, SERVING, FaultyServer, faulty_servers, registered
from .helpers import until
from .servers import EchoServer
from .test_pool import call, where

pytestmark = pytest.mark.anyio

SERVICE = "fleet/subset"


def subsets(clients: list[int | str] | range, servers: list[str], size: int) -> list[set[str]]:
    result = []
    for client_id in clients:
        ring = Ring(size, client_point(client_id, SERVICE), SERVICE)
        ring.reset(servers)
        result.append(set(ring.subset()))
    return result


def rings(clients: int, servers: list[str], size: int) -> list[Ring]:
    result = []
    for client_id in range(clients):
        ring = Ring(size, client_point(client_id, SERVICE), SERVICE)
        ring.reset(servers)
        ring.subset()
        result.append(ring)
    return result


SERVERS = [f"10.1.{i // 256}.{i % 256}:50051" for i in range(1000)]


def spread(chosen: list[set[str]], servers: list[str]) -> tuple[int, int]:
    per_server = Counter(address for subset in chosen for address in subset)
    counts = [per_server.get(address, 0) for address in servers]
    return max(counts), min(counts)


@pytest.mark.parametrize(
    ("clients", "servers", "size"), [(300, 1000, 32), (40, 20, 5), (7, 3, 5), (50, 33, 33)]
)
def test_every_client_holds_exactly_its_subset_size(clients: int, servers: int, size: int) -> None:
    chosen = subsets(range(clients), SERVERS[:servers], size)
    assert {len(subset) for subset in chosen} == {min(size, servers)}


def test_ranked_clients_spread_connections_evenly() -> None:
    # 300 x 32 / 1,000 = 9.6 connections per server: 9 to 11.
    high, low = spread(subsets(range(300), SERVERS, 32), SERVERS)
    assert high / low <= 1.25, (high, low)
    # 40 clients x 5 over 20 servers: exactly 10 each.
    assert spread(subsets(range(40), SERVERS[:20], 5), SERVERS[:20]) == (10, 10)


def test_servers_leaving_move_only_their_own_connections() -> None:
    held = rings(300, SERVERS, 32)
    before = [set(ring.subset()) for ring in held]
    leavers = set(random.Random(1).sample(SERVERS, 10))
    for ring in held:
        for address in leavers:
            ring.discard(address)
    after = [set(ring.subset()) for ring in held]
    for old, new in zip(before, after, strict=True):
        # No client lets go of a server that stayed; each replaces exactly its leavers.
        assert old - leavers <= new and len(new) == 32
        assert len(new - old) == len(old & leavers)
    assert sum(len(old & leavers) for old in before) > 0
    high, low = spread(after, [s for s in SERVERS if s not in leavers])
    assert high / low <= 1.25, (high, low)


def test_servers_joining_take_their_share_and_no_more() -> None:
    held = rings(300, SERVERS, 32)
    before = [set(ring.subset()) for ring in held]
    joiners = {f"10.2.0.{i}:50051" for i in range(10)}
    for ring in held:
        for address in sorted(joiners):
            ring.add(address)
    after = [set(ring.subset()) for ring in held]
    for old, new in zip(before, after, strict=True):
        # A client moves only to a joiner, one connection let go for each.
        assert new - old <= joiners and len(old - new) == len(new - old) and len(new) == 32
    per_joiner = Counter(a for subset in after for a in subset if a in joiners)
    # About 300 x 32 / 1,010 = 9.5 each.
    assert set(per_joiner) == joiners and max(per_joiner.values()) <= 12
    assert min(per_joiner.values()) >= 8


def test_unhealthy_members_get_healthy_stand_ins() -> None:
    ring = Ring(4, client_point(3, SERVICE), SERVICE)
    ring.reset(SERVERS[:20])
    subset = ring.subset()
    sick = set(subset[:2])
    chosen = ring.subset(lambda address: address not in sick)
    # The sick ones are kept (their health is followed) and two healthy ones stand in.
    assert chosen[:4] == subset and len(chosen) == 6
    assert len([a for a in chosen if a not in sick]) == 4
    # Recovered: the stand-ins go, the subset never moved.
    assert ring.subset(lambda address: True) == subset


def test_the_ring_kept_up_to_date_stays_exact_and_moves_only_what_changed() -> None:
    rng = random.Random(7)
    ring = Ring(8, client_point(3, SERVICE), SERVICE)
    present: set[str] = set()
    ring.reset(present)
    held: set[str] = set()
    for step in range(3000):
        if present and rng.random() < 0.45:
            address = rng.choice(sorted(present))
            present.discard(address)
            ring.discard(address)
            now = set(ring.subset())
            # Only the leaver is replaced.
            assert held - {address} <= now
        else:
            address = f"127.0.{step // 256}.{step % 256}:1"
            present.add(address)
            ring.add(address)
            now = set(ring.subset())
            # At most the joiner comes in, in place of one.
            assert now - held <= {address} or len(held) < 8
        assert len(now) == min(8, len(present)) and now <= present
        held = now
    assert len(present) > 100


def test_a_client_given_a_rank_takes_its_plan() -> None:
    ring = Ring(5, client_point("host/1", SERVICE), SERVICE)
    ring.reset(SERVERS[:20])
    ring.subset()
    ring.move(client_point(0, SERVICE))
    assert ring.subset() == ring.plan() and len(ring.plan()) == 5


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
    with pytest.raises(TypeError, match="client_id"):
        aiodiscovery.BalancedChannel(None, "svc", subset_size=2, client_id=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subset_ranks"):
        aiodiscovery.BalancedChannel(None, "svc", subset_size=2, subset_ranks="no")  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def echo_servers(count: int) -> AsyncIterator[list[EchoServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(EchoServer(f"s{i}")) for i in range(count)]


def all_ready(channel: aiodiscovery.BalancedChannel, count: int) -> bool:
    return channel.statistics().by_state().get("READY", 0) == count


def names_of(servers: list[EchoServer] | list[FaultyServer]) -> dict[str, str]:
    return {server.address: server.name for server in servers}


def held(channel: aiodiscovery.BalancedChannel) -> set[str]:
    return {a for a, s in channel.statistics().subchannels.items() if not s.draining}


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
            assert selection.subset is not None and len(selection.subset) == 2
            assert held(channel) == set(selection.subset)
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
            await until(lambda: leaver not in held(channel) and len(held(channel)) == 2)
            assert before - {leaver} <= held(channel)
            stats = channel.statistics().selection
            assert stats is not None and stats.endpoints == 5 and stats.client_id == 0


async def rank_keys(client: EtcdClient, service: str) -> dict[str, str]:
    _, kvs = await list_prefix(client, rank_prefix(service))
    return {kv.key: kv.value.decode() for kv in kvs}


async def test_without_a_client_id_each_channel_takes_a_rank_from_etcd(
    client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    async with (
        echo_servers(4) as servers,
        registered(client, service, servers),
        contextlib.AsyncExitStack() as stack,
    ):
        first = await stack.enter_async_context(await resolve(client, service, subset_size=2))
        second = await stack.enter_async_context(await resolve(client, service, subset_size=2))
        one, two = first.statistics().selection, second.statistics().selection
        assert one is not None and two is not None
        assert isinstance(one.client_id, str) and one.client_id == two.client_id
        assert (one.placed_by, two.placed_by) == ("etcd rank", "etcd rank")
        assert {one.rank, two.rank} == {0, 1}
        # Ranks 0 and 1 sit half a ring apart: 4 servers, two subsets of 2, no overlap.
        assert one.subset is not None and two.subset is not None
        assert len(one.subset) == len(two.subset) == 2 and not set(one.subset) & set(two.subset)
        keys = await rank_keys(client, service)
        assert keys == {f"{rank_prefix(service)}{r}": one.client_id for r in (0, 1)}
        # Outside the service's prefix: its own watchers never see them.
        assert set(await em.list_endpoints()) == {f"{service}/{s.address}" for s in servers}
        await stack.aclose()
    # Closing revokes the lease: the ranks are free again.
    assert await rank_keys(client, service) == {}


async def test_ranks_can_be_turned_off(client: EtcdClient, service: str) -> None:
    async with (
        echo_servers(4) as servers,
        registered(client, service, servers),
        contextlib.AsyncExitStack() as stack,
    ):
        first, second = [
            await stack.enter_async_context(
                await resolve(client, service, subset_size=1, subset_ranks=False)
            )
            for _ in range(2)
        ]
        third = await stack.enter_async_context(
            await resolve(client, service, subset_size=1, client_id=3)
        )
        one, two = first.statistics().selection, second.statistics().selection
        three = third.statistics().selection
        assert one is not None and two is not None and three is not None
        assert (one.placed_by, one.rank) == ("hash", None)
        assert one.subset == two.subset and one.subset is not None and len(one.subset) == 1
        assert (three.placed_by, three.rank) == ("client_id", 3)
        assert await rank_keys(client, service) == {}


async def test_clients_racing_for_ranks_get_distinct_dense_ones(
    client: EtcdClient, service: str
) -> None:
    claims = [RankClaim(client, service, f"client-{i}") for i in range(40)]
    ranks: list[int] = []

    async def claim(rank_claim: RankClaim) -> None:
        with anyio.fail_after(10):
            ranks.append(await rank_claim.claim())

    async with anyio.create_task_group() as tg:
        for rank_claim in claims:
            tg.start_soon(claim, rank_claim)
    assert sorted(ranks) == list(range(40))
    keys = await rank_keys(client, service)
    assert {keys[f"{rank_prefix(service)}{c.rank}"] for c in claims} == {
        f"client-{i}" for i in range(40)
    }
    for rank_claim in claims:
        await rank_claim._revoke()
    assert await rank_keys(client, service) == {}


async def test_a_lost_rank_key_is_claimed_again(client: EtcdClient, service: str) -> None:
    seen: list[int] = []
    claim = RankClaim(client, service, "me", ttl=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(claim.run, seen.append)
        await until(lambda: seen == [0])
        key = f"{rank_prefix(service)}0"
        await client.unary(lambda m: m.kv.DeleteRange, rpc.DeleteRangeRequest(key=key.encode()))
        # Noticed within a TTL, and the same number taken again.
        await until(lambda: seen == [0, 0] and claim.claims == 2, timeout=15)
        assert (await rank_keys(client, service)) == {key: "me"}
        tg.cancel_scope.cancel()
    assert await rank_keys(client, service) == {}


async def test_a_rank_is_claimed_once_etcd_answers(etcd: EtcdServer, service: str) -> None:
    async with TcpProxy(etcd.client_port) as proxy:
        proxied = await aiodiscovery.connect(proxy.url, timeout=1)
        try:
            proxy.cut()
            claim = RankClaim(proxied, service, "late")
            with pytest.raises(aiodiscovery.EtcdError):
                await claim.claim()
            seen: list[int] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(claim.run, seen.append)
                # Never a crash while etcd is out of reach; the rank comes once it answers.
                proxy.heal()
                await until(lambda: seen == [0], timeout=20)
                tg.cancel_scope.cancel()
        finally:
            await proxied.close()


@pytest.mark.parametrize("ids", ["str", "int", "none"])
async def test_forty_channels_call_exactly_five_servers_each(
    client: EtcdClient, service: str, ids: str
) -> None:
    def client_id(i: int) -> int | str | None:
        return {"str": f"web-{i}", "int": i, "none": None}[ids]

    async with echo_servers(20) as servers, registered(client, service, servers):
        names = names_of(servers)
        async with contextlib.AsyncExitStack() as stack:
            channels = [
                await stack.enter_async_context(
                    await resolve(client, service, subset_size=5, client_id=client_id(i))
                )
                for i in range(40)
            ]
            per_server: Counter[str] = Counter()
            for channel in channels:
                selection = channel.statistics().selection
                placed = "client_id" if ids == "int" else "etcd rank"
                assert selection is not None and selection.placed_by == placed
                await until(functools.partial(all_ready, channel, 5))
                call = channel.unary_unary("/test.Echo/Unary")
                replies = {(await call(b"x", timeout=5)).split(b":")[0].decode() for _ in range(15)}
                # Round robin over exactly the 5 it holds.
                assert replies == {names[a] for a in held(channel)} and len(replies) == 5
                per_server.update(replies)
            assert {s.rank for s in (c.statistics().selection for c in channels) if s} == set(
                range(40)
            )
            assert len(per_server) == 20
            assert max(per_server.values()) <= 1.5 * min(per_server.values()), per_server


async def test_an_unhealthy_member_gets_a_stand_in_and_the_size_holds(
    client: EtcdClient, service: str
) -> None:
    async with faulty_servers(6) as servers, registered(client, service, servers):
        names = names_of(servers)
        async with await resolve(
            client, service, subset_size=3, client_id=2, health_check=""
        ) as channel:

            def serving() -> set[str]:
                stats = channel.statistics().subchannels
                return {names[a] for a, s in stats.items() if s.health == "SERVING"}

            await until(lambda: len(serving()) == 3)
            subset = serving()
            sick = next(s for s in servers if s.name == sorted(subset)[0])
            await sick.set_health(NOT_SERVING)
            # Another endpoint stands in: three healthy ones take the calls, the sick one is
            # still followed.
            await until(lambda: len(serving()) == 3 and sick.name not in serving())
            stand_in = serving() - subset
            assert len(stand_in) == 1
            selection = channel.statistics().selection
            assert selection is not None and selection.standing_in == 1
            assert sick.address in (selection.subset or ())
            answered = where([await call(channel) for _ in range(30)])
            assert set(answered) == subset - {sick.name} | stand_in
            # Healthy again: the stand-in goes, the subset is what it was.
            await sick.set_health(SERVING)
            await until(lambda: set(held(channel)) == {a for a, n in names.items() if n in subset})
            selection = channel.statistics().selection
            assert selection is not None and selection.standing_in == 0


async def test_a_stopped_member_gets_a_stand_in(client: EtcdClient, service: str) -> None:
    async with faulty_servers(5) as servers, registered(client, service, servers):
        names = names_of(servers)
        async with await resolve(client, service, subset_size=2, client_id=0) as channel:
            await until(lambda: channel.statistics().by_state().get("READY", 0) == 2)
            subset = {names[a] for a in held(channel)}
            stopped = next(s for s in servers if s.name == sorted(subset)[0])
            await stopped.stop()
            await until(
                lambda: (
                    len(
                        {
                            a
                            for a, s in channel.statistics().subchannels.items()
                            if s.state == "READY" and not s.draining
                        }
                    )
                    == 2
                    and stopped.address in held(channel)
                )
            )
            answered = where([await call(channel) for _ in range(20)])
            assert len(answered) == 2 and stopped.name not in answered


async def test_junk_under_the_ranks_prefix_is_ignored(client: EtcdClient, service: str) -> None:
    prefix = rank_prefix(service)
    for suffix in ("abc", "9" * 5000, "-1", "٣", "0/extra"):
        await client.unary(
            lambda m: m.kv.Put, rpc.PutRequest(key=f"{prefix}{suffix}".encode(), value=b"x")
        )
    # An id that is not valid UTF-8 is written escaped, not refused.
    claim = RankClaim(client, service, "host\udc80/1")
    # Untrusted keys name no rank: the lowest free one is still 0.
    assert await claim.claim() == 0
    assert (await rank_keys(client, service))[f"{prefix}0"] == "host\\udc80/1"
    await claim._revoke()
    await client.unary(
        lambda m: m.kv.DeleteRange,
        rpc.DeleteRangeRequest(key=prefix.encode(), range_end=prefix_range_end(prefix.encode())),
    )


async def test_an_ejected_member_gets_a_stand_in(client: EtcdClient, service: str) -> None:
    # Ejected for longer than the test runs: the stand-in is seen while it lasts.
    detection = aiodiscovery.OutlierDetection(
        interval=0.1, base_ejection_time=60, max_ejection_time=60
    )
    async with faulty_servers(6) as servers, registered(client, service, servers):
        names = names_of(servers)
        async with await resolve(
            client, service, subset_size=2, client_id=0, outlier_detection=detection
        ) as channel:

            def taking_calls() -> set[str]:
                stats = channel.statistics().subchannels
                return {
                    names[a]
                    for a, s in stats.items()
                    if s.state == "READY" and not s.ejected and not s.draining
                }

            await until(lambda: len(taking_calls()) == 2)
            bad = next(s for s in servers if s.name == sorted(taking_calls())[0])
            bad.fail_with = grpc.StatusCode.UNAVAILABLE
            unary = channel.unary_unary("/test.Echo/Unary")
            for _ in range(10):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await unary(b"x", timeout=5)
            await until(lambda: channel.statistics().ejected == 1)
            # Ejected, still held; another endpoint stands in: two still take the calls.
            await until(lambda: len(taking_calls()) == 2 and bad.name not in taking_calls())
            assert bad.address in held(channel)
            answered = where([await call(channel) for _ in range(20)])
            assert len(answered) == 2 and bad.name not in answered
