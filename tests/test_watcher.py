"""The resilient watcher and EndpointManager.watch() against real etcd and real faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial

import anyio
import pytest

import aiodiscovery
from aiodiscovery import (
    Endpoint,
    EndpointManager,
    EndpointSet,
    EtcdClient,
    EtcdUnavailableError,
    Operation,
    Update,
    Watcher,
)
from aiodiscovery.testing import EtcdCluster, EtcdServer, TcpProxy

from .helpers import until, until_accepted

pytestmark = pytest.mark.anyio


async def next_batch(batches: AsyncIterator[list[Update]], timeout: float = 10) -> list[Update]:
    with anyio.fail_after(timeout):
        return await anext(batches)


async def converges(watcher: Watcher, expected: dict[str, Endpoint], timeout: float = 20) -> None:
    """Wait for the watcher's set to equal ``expected``, failing with both sides shown."""
    try:
        with anyio.fail_after(timeout):
            while dict(watcher.snapshot) != expected:
                await watcher.wait_for_change()
    except TimeoutError:
        pytest.fail(f"watcher never matched: {dict(watcher.snapshot)} != {expected}; {watcher!r}")


def summary(batch: list[Update]) -> list[tuple[str, str, str | None]]:
    return [
        (u.op.name, u.key.rsplit("/", 1)[1], u.endpoint.addr if u.endpoint else None) for u in batch
    ]


async def test_watch_batches_follow_revisions(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/e0", Endpoint("a:0"))
    async with contextlib.aclosing(em.watch()) as batches:
        assert summary(await next_batch(batches)) == [("ADD", "e0", "a:0")]
        await em.add_endpoint(f"{service}/e1", Endpoint("a:1"))
        assert summary(await next_batch(batches)) == [("ADD", "e1", "a:1")]
        await em.update(
            [
                Update.add(f"{service}/e2", Endpoint("a:2")),
                Update.delete(f"{service}/e0"),
                Update.add(f"{service}/e3", Endpoint("a:3")),
            ]
        )
        assert summary(await next_batch(batches)) == [
            ("ADD", "e2", "a:2"),
            ("DELETE", "e0", None),
            ("ADD", "e3", "a:3"),
        ]
        await em.delete_endpoint(f"{service}/e1")
        assert summary(await next_batch(batches)) == [("DELETE", "e1", None)]


async def test_first_batch_is_empty_for_an_empty_service(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    async with contextlib.aclosing(em.watch()) as batches:
        assert await next_batch(batches) == []
        lease = await client.lease(30)
        await em.add_endpoint(f"{service}/x", Endpoint("x:1"), lease=lease)
        [update] = await next_batch(batches)
        assert update == Update(Operation.ADD, f"{service}/x", Endpoint("x:1"), lease.id)


async def test_watcher_snapshot_statistics_and_repr(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/a", Endpoint("h:1"))
    await em.add_endpoint(f"{service}/b", Endpoint("h:1", {"weight": 2}))
    async with Watcher(client, f"etcd:///{service}") as watcher:
        snapshot = watcher.snapshot
        assert isinstance(snapshot, EndpointSet)
        assert dict(snapshot) == await em.list_endpoints()
        assert snapshot.addresses() == ["h:1"]
        await em.add_endpoint(f"{service}/c", Endpoint("h:2"))
        newer = await watcher.wait_for_change(snapshot.revision)
        assert newer.revision > snapshot.revision and set(newer) == {
            f"{service}/{k}" for k in "abc"
        }
        assert len(snapshot) == 2, "a snapshot never changes after it was handed out"
        stats = watcher.statistics()
        assert (stats.endpoints, stats.revision, stats.reconnects) == (3, newer.revision, 0)
        assert f"endpoints=3 revision={newer.revision}" in repr(watcher)


async def test_bad_values_drop_the_key_warn_once_and_never_stop_the_watch(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    em = EndpointManager(client, service)
    caplog.set_level(logging.WARNING, logger="aiodiscovery")
    async with Watcher(client, service) as watcher, contextlib.aclosing(em.watch()) as batches:
        assert await next_batch(batches) == []
        await client.put(f"{service}/good1".encode(), b'{"Addr":"g:1"}')
        await client.put(f"{service}/bad".encode(), b"{not json")
        await client.put(f"{service}/bad".encode(), b'{"Addr":42}')
        await client.put(f"{service}/good2".encode(), b'{"Addr":"g:2"}')
        assert summary(await next_batch(batches)) == [("ADD", "good1", "g:1")]
        assert summary(await next_batch(batches)) == [("ADD", "good2", "g:2")]
        # A known key whose value turns bad leaves the set: it no longer names an endpoint.
        await client.put(f"{service}/good1".encode(), b'{"Addr":[]}')
        assert summary(await next_batch(batches)) == [("DELETE", "good1", None)]
        await converges(watcher, {f"{service}/good2": Endpoint("g:2")})
        assert watcher.statistics().bad_values == 3
    bad_warnings = [r for r in caplog.records if f"{service}/bad'" in r.getMessage()]
    assert len(bad_warnings) == 1, "one warning per key: both readers share one etcd watch"


async def test_slow_subscriber_never_holds_up_the_watcher(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    async with Watcher(client, service) as watcher:
        slow = watcher.snapshots()
        first = await anext(slow)
        assert len(first) == 0
        for i in range(50):
            await em.add_endpoint(f"{service}/{i:02}", Endpoint(f"h:{i}"))
        # The watcher reached the end although `slow` has not read anything since.
        await converges(watcher, await em.list_endpoints())
        with anyio.fail_after(5):
            latest = await anext(slow)
        assert len(latest) == 50, "the slow reader skips straight to the latest state"
        await slow.aclose()


async def test_cut_stream_compaction_and_deletes_while_away_are_recovered(service: str) -> None:
    async with EtcdServer() as etcd, TcpProxy(etcd.client_port) as proxy:
        direct = await aiodiscovery.connect(etcd.url)
        through_proxy = await aiodiscovery.connect(proxy.url)
        try:
            em = EndpointManager(direct, service)
            for name in ("keep", "gone1", "gone2"):
                await em.add_endpoint(f"{service}/{name}", Endpoint(f"{name}:1"))
            async with Watcher(through_proxy, service, backoff_cap=0.5) as watcher:
                await converges(watcher, await em.list_endpoints())
                proxy.cut()
                await em.update(
                    [Update.delete(f"{service}/gone1"), Update.delete(f"{service}/gone2")]
                )
                await em.add_endpoint(f"{service}/new", Endpoint("new:1"))
                for i in range(5):
                    await direct.put(b"unrelated", str(i).encode())
                revision = (await direct.get(b"unrelated")).mod_revision
                await direct.compact(revision)
                proxy.heal()
                await converges(watcher, await em.list_endpoints())
                stats = watcher.statistics()
                assert stats.reconnects >= 1 and stats.compactions >= 1 and stats.relists >= 1
                assert set(watcher.snapshot) == {f"{service}/keep", f"{service}/new"}
        finally:
            await direct.close()
            await through_proxy.close()


async def test_watch_resumes_after_etcd_restart_without_relisting(service: str) -> None:
    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url)
        try:
            em = EndpointManager(client, service)
            await em.add_endpoint(f"{service}/before", Endpoint("b:1"))
            async with Watcher(client, service, backoff_cap=0.5) as watcher:
                etcd.kill()
                await etcd.restart()
                await until_accepted(
                    lambda: em.add_endpoint(f"{service}/after", Endpoint("a:1")), timeout=20
                )
                await converges(watcher, await em.list_endpoints())
                stats = watcher.statistics()
                assert stats.reconnects >= 1
                assert stats.relists == 0, "history was intact: the watch must resume, not re-list"
        finally:
            await client.close()


async def test_member_in_use_killed_loses_no_event(service: str) -> None:
    async with EtcdCluster(3) as cluster:
        watching = await aiodiscovery.connect(cluster.urls)  # pick_first: members[0]
        writing = await aiodiscovery.connect([m.url for m in cluster.members[1:]])
        try:
            em = EndpointManager(writing, service)
            seen: set[str] = set()
            async with Watcher(watching, service, backoff_cap=0.5) as watcher:
                async with contextlib.aclosing(
                    EndpointManager(watching, service).watch()
                ) as batches:
                    assert await next_batch(batches) == []
                    for i in range(60):
                        if i == 20:
                            cluster.members[0].kill()
                        await until_accepted(
                            partial(em.add_endpoint, f"{service}/{i:03}", Endpoint(f"h:{i}")),
                            timeout=30,
                        )
                    expected = await em.list_endpoints()
                    assert len(expected) == 60
                    with anyio.fail_after(30):
                        while len(seen) < 60:
                            for update in await anext(batches):
                                assert update.op is Operation.ADD
                                seen.add(update.key)
                await converges(watcher, expected)
                assert watcher.statistics().relists == 0
            assert seen == set(expected)
        finally:
            await watching.close()
            await writing.close()


async def test_watcher_fails_fast_when_etcd_is_unreachable(service: str) -> None:
    client = aiodiscovery.EtcdClient(f"http://127.0.0.1:{aiodiscovery.testing.free_port()}")
    try:
        with pytest.raises(EtcdUnavailableError, match=r"within 0\.5 s"):
            async with Watcher(client, service, start_timeout=0.5):
                pytest.fail("must not start")
    finally:
        await client.close()


async def test_cancelling_the_owner_leaves_no_task_behind(client: EtcdClient, service: str) -> None:
    before = set(asyncio.all_tasks())
    started = anyio.Event()

    async def owner() -> None:
        async with (
            Watcher(client, service),
            contextlib.aclosing(EndpointManager(client, service).watch()) as batches,
        ):
            await anext(batches)
            started.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(owner)
        with anyio.fail_after(10):
            await started.wait()
        tg.cancel_scope.cancel()

    def leftovers() -> set[asyncio.Task[object]]:
        return {t for t in asyncio.all_tasks() - before if not t.done()}

    # grpc finishes a cancelled call's bookkeeping task a loop iteration or two later.
    await until(lambda: not leftovers(), timeout=2)


async def test_progress_notifications_let_a_quiet_watch_resume_past_compaction(
    service: str,
) -> None:
    interval = "--experimental-watch-progress-notify-interval=100ms"
    async with EtcdServer(extra_args=[interval]) as etcd, TcpProxy(etcd.client_port) as proxy:
        direct = await aiodiscovery.connect(etcd.url)
        through_proxy = await aiodiscovery.connect(proxy.url)
        try:
            em = EndpointManager(direct, service)
            await em.add_endpoint(f"{service}/a", Endpoint("a:1"))
            async with Watcher(through_proxy, service, backoff_cap=0.5) as watcher:
                for i in range(20):
                    await direct.put(b"elsewhere", str(i).encode())
                latest = (await direct.get(b"elsewhere")).mod_revision
                # Only a progress notification can tell a watch of our quiet prefix about it.
                with anyio.fail_after(10):
                    while watcher.statistics().revision < latest:
                        await watcher.wait_for_change(watcher.statistics().revision)
                proxy.cut()
                await direct.compact(latest)
                await em.add_endpoint(f"{service}/b", Endpoint("b:1"))
                proxy.heal()
                await converges(watcher, await em.list_endpoints())
                stats = watcher.statistics()
                assert stats.reconnects >= 1
                assert (stats.compactions, stats.relists) == (0, 0)
        finally:
            await direct.close()
            await through_proxy.close()


async def test_errors_in_the_block_come_out_unwrapped(client: EtcdClient, service: str) -> None:
    with pytest.raises(ValueError, match="mine"):
        async with Watcher(client, service):
            raise ValueError("mine")


async def test_snapshot_tells_when_each_key_was_written(client: EtcdClient, service: str) -> None:
    # A server back on its old address writes the same value again: only the key's mod revision
    # says so, and the pool needs it to reconnect at once.
    em = EndpointManager(client, service)
    key = f"{service}/e1"
    await em.add_endpoint(key, Endpoint("a:1"))
    async with Watcher(client, service) as watcher:
        first = watcher.snapshot.mod_revision(key)
        assert first > 0
        assert watcher.snapshot.mod_revision(f"{service}/missing") == 0
        await em.add_endpoint(key, Endpoint("a:1"))
        with anyio.fail_after(10):
            while watcher.snapshot.mod_revision(key) == first:
                await watcher.wait_for_change()
        assert watcher.snapshot.mod_revision(key) > first
        assert dict(watcher.snapshot) == {key: Endpoint("a:1")}
        await em.delete_endpoint(key)
        with anyio.fail_after(10):
            while key in watcher.snapshot:
                await watcher.wait_for_change()
        assert watcher.snapshot.mod_revision(key) == 0
