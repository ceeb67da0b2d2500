"""Member-level failover: a frozen (SIGSTOPped) etcd member on a real 3-member cluster.

A frozen member keeps its TCP connections open and answers nothing; gRPC's keep-alive ping would
notice only after 5 s + 3 s. The client must notice sooner, from the answers it expects: a
keep-alive reply due every TTL/3, a probe of an idle watch's member.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from aetcd import rpc

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, EtcdClient, Registrar, Watcher
from aiodiscovery.testing import EtcdCluster, EtcdHistory, EtcdServer, WatchRecord, check_history

from .helpers import until, until_accepted
from .test_registrar import make_leader

pytestmark = pytest.mark.anyio


def in_use(cluster: EtcdCluster, client: EtcdClient) -> EtcdServer:
    return next(m for m in cluster.members if m.url == client.members.active.url)


async def deletes_of(observer: EtcdClient, key: str, stop: anyio.Event) -> list[float]:
    """When ``key`` was deleted, seen from ``observer``'s own member, until ``stop`` is set."""
    deleted: list[float] = []
    start = (
        await observer.members.active.kv.Range(rpc.RangeRequest(key=b"-"), timeout=5)
    ).header.revision + 1
    call = observer.members.active.watch.Watch()
    try:
        create = rpc.WatchCreateRequest(key=key.encode(), start_revision=start)
        await call.write(rpc.WatchRequest(create_request=create))
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                while True:
                    reply = await call.read()
                    assert reply is not None and not reply.canceled
                    deleted.extend(
                        time.monotonic() for e in reply.events if e.type == rpc.Event.DELETE
                    )

            tg.start_soon(read)
            await stop.wait()
            tg.cancel_scope.cancel()
    finally:
        call.cancel()
    return deleted


@contextlib.asynccontextmanager
async def history_checked(
    cluster: EtcdCluster, client: EtcdClient, service: str, watcher: Watcher | None = None
) -> AsyncIterator[None]:
    """Record etcd's history of ``service`` and what ``client`` delivered (its batches, and the
    ``watcher``'s snapshots if given) while the block runs; then check the watch invariants."""
    records = [WatchRecord("batches")]
    async with EtcdHistory(cluster.urls, f"{service}/") as history:
        async with anyio.create_task_group() as tg:
            tg.start_soon(records[0].follow_batches, EndpointManager(client, service))
            if watcher is not None:
                records.append(WatchRecord("watcher"))
                tg.start_soon(records[1].follow_watcher, watcher)
            await until(lambda: all(r.deliveries for r in records))
            yield
            # The history catches up with the cluster, then every record with its last event.
            await history.catch_up((await EndpointManager(client, service).list_batch()).revision)
            last = max([history.start_revision, *(e.revision for e in history.events)])
            await until(lambda: all(r.last_revision >= last for r in records))
            tg.cancel_scope.cancel()
    check = check_history(history, records)
    check.assert_ok()
    assert check.checked >= len(records)


@pytest.fixture
async def cluster() -> AsyncIterator[EtcdCluster]:
    async with EtcdCluster(3) as cluster:
        yield cluster


@pytest.mark.parametrize("role", ["follower", "leader"])
async def test_a_registrar_keeps_its_key_through_a_frozen_member(
    cluster: EtcdCluster, role: str
) -> None:
    ttl = 2
    client = await aiodiscovery.connect(cluster.urls)
    frozen = in_use(cluster, client)
    observer = await aiodiscovery.connect(next(m.url for m in cluster.members if m is not frozen))
    try:
        if role == "leader":
            await make_leader(cluster, frozen)
        else:
            others = [m for m in cluster.members if m is not frozen]
            await make_leader(cluster, others[0])
        async with (
            history_checked(cluster, client, "svc/frozen"),
            Registrar(client, "svc/frozen", "10.0.9.1:1", ttl=ttl) as reg,
        ):
            lease = reg.lease_id
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                found: list[list[float]] = []

                async def record() -> None:
                    found.append(await deletes_of(observer, reg.key, stop))

                tg.start_soon(record)
                await until(lambda: reg.statistics().keepalive_round_trips >= 1)
                frozen.stop()
                try:
                    # Three TTLs: without failover the lease would lapse within one.
                    await anyio.sleep(3 * ttl)
                    stats = reg.statistics()
                    stop.set()
                finally:
                    frozen.resume()
            assert found == [[]], "the key was deleted while a member was frozen"
            assert stats.losses == 0, stats
            assert reg.lease_id == lease
            assert client.statistics().members.failovers >= 1
            assert client.members.active.url != frozen.url
    finally:
        await client.close()
        await observer.close()


@pytest.mark.parametrize("role", ["follower", "leader"])
async def test_a_watcher_catches_up_soon_after_its_member_freezes(
    cluster: EtcdCluster, service: str, role: str
) -> None:
    client = await aiodiscovery.connect(cluster.urls)
    frozen = in_use(cluster, client)
    others = [m for m in cluster.members if m is not frozen]
    await make_leader(cluster, frozen if role == "leader" else others[0])
    writer = await aiodiscovery.connect(others[0].url)
    try:
        em = EndpointManager(writer, service)
        await em.add_endpoint(f"{service}/a", Endpoint("10.0.0.1:1"))
        await em.add_endpoint(f"{service}/b", Endpoint("10.0.0.2:1"))
        async with (
            Watcher(client, service) as watcher,
            history_checked(cluster, client, service, watcher),
        ):
            assert len(watcher.snapshot) == 2
            frozen.stop()
            try:
                # With the leader frozen, the delete commits once the others elect a new one.
                await until_accepted(lambda: em.delete_endpoint(f"{service}/a"))
                deleted = time.monotonic()
                with anyio.fail_after(15):
                    while f"{service}/a" in watcher.snapshot:
                        await watcher.wait_for_change()
                caught_up = time.monotonic() - deleted
            finally:
                frozen.resume()
        heartbeat = client.members.heartbeat
        print(f"watcher caught up {caught_up:.2f} s after a delete on a frozen member")
        # Two heartbeats to give the member up, then a resume on another member; gRPC's own
        # ping would take 8 s. The bound leaves room for a loaded machine.
        assert caught_up < 2 * heartbeat + 2.0
        assert client.statistics().members.failovers >= 1
        assert watcher.statistics().reconnects >= 1
    finally:
        await client.close()
        await writer.close()
