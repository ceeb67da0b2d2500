"""One etcd watch per prefix per client, shared by every Watcher and watch() iterator; the
Watcher's life cycle; a prefix this user may not read."""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import AsyncIterator

import anyio
import pytest

import aiodiscovery
from aiodiscovery import (
    Endpoint,
    EndpointManager,
    EtcdClient,
    PermissionDeniedError,
    Update,
    Watcher,
)
from aiodiscovery.testing import EtcdServer

from .helpers import eventually

pytestmark = pytest.mark.anyio


def etcd_watchers(etcd: EtcdServer) -> int:
    """How many watchers etcd itself holds right now (its own metric)."""
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^etcd_debugging_mvcc_watcher_total (\d+)", text, re.MULTILINE)
    assert match is not None
    return int(match[1])


async def watchers_settle(etcd: EtcdServer, expected: int) -> None:
    await eventually(lambda: anyio.to_thread.run_sync(etcd_watchers, etcd), lambda n: n == expected)


async def test_readers_of_one_prefix_share_one_etcd_watch(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/e1", Endpoint("10.0.0.1:1"))
    baseline = await anyio.to_thread.run_sync(etcd_watchers, etcd)
    async with contextlib.AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(Watcher(client, service)) for _ in range(10)]
        batches = await stack.enter_async_context(contextlib.aclosing(em.watch()))
        assert [u.key for u in await anext(batches)] == [f"{service}/e1"]
        other = await stack.enter_async_context(Watcher(client, service + "-other"))
        assert client.statistics().watches == 2
        await watchers_settle(etcd, baseline + 2)
        await em.add_endpoint(f"{service}/e2", Endpoint("10.0.0.2:1"))
        assert [u.key for u in await anext(batches)] == [f"{service}/e2"]
        for watcher in watchers:
            with anyio.fail_after(10):
                while len(watcher.snapshot) != 2:
                    await watcher.wait_for_change()
        # Every reader sees the same decoded set, not a copy per reader.
        assert len({id(w.snapshot) for w in watchers}) == 1
        assert len(other.snapshot) == 0
    # The last reader out closed the etcd watch.
    assert client.statistics().watches == 0
    await watchers_settle(etcd, baseline)


async def test_a_late_reader_starts_from_the_current_state(
    client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    async with Watcher(client, service) as first:
        await em.update(
            [Update.add(f"{service}/e{i}", Endpoint(f"10.0.0.{i}:1")) for i in range(3)]
        )
        with anyio.fail_after(10):
            while len(first.snapshot) != 3:
                await first.wait_for_change()
        async with contextlib.aclosing(em.watch_batches()) as batches:
            batch = await anext(batches)
            assert batch.relist and batch.revision == first.snapshot.revision
            assert sorted(u.key for u in batch.updates) == [f"{service}/e{i}" for i in range(3)]


async def test_a_reader_far_behind_gets_merged_batches(
    client: EtcdClient, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiodiscovery._etcd.watch.hub, "MAX_PENDING", 4)
    em = EndpointManager(client, service)
    async with Watcher(client, service) as watcher, contextlib.aclosing(em.watch()) as batches:
        assert await anext(batches) == []
        for i in range(10):
            await em.add_endpoint(f"{service}/e{i % 3}", Endpoint(f"10.0.0.{i}:1"))
        with anyio.fail_after(10):
            while watcher.snapshot.get(f"{service}/e0") != Endpoint("10.0.0.9:1"):
                await watcher.wait_for_change()
        # Ten puts, a reader that read none: what it missed arrives in a few merged batches
        # (never more than MAX_PENDING + 1 waiting), last write of each key winning.
        received: list[list[Update]] = []
        state: dict[str, Endpoint | None] = {}
        while state.get(f"{service}/e0") != Endpoint("10.0.0.9:1"):
            with anyio.fail_after(5):
                batch = await anext(batches)
            received.append(batch)
            state.update({u.key: u.endpoint for u in batch})
        assert len(received) <= 5 < 10
        assert max(len(batch) for batch in received) == 3
        assert state == {
            f"{service}/e0": Endpoint("10.0.0.9:1"),
            f"{service}/e1": Endpoint("10.0.0.7:1"),
            f"{service}/e2": Endpoint("10.0.0.8:1"),
        }


async def test_waiting_on_a_watcher_that_has_exited_raises(
    client: EtcdClient, service: str
) -> None:
    woken: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        async with Watcher(client, service) as watcher:

            async def wait() -> None:
                try:
                    await watcher.wait_for_change()
                except RuntimeError as exc:
                    woken.append(exc)

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
    assert len(woken) == 1 and "exited" in str(woken[0])
    with pytest.raises(RuntimeError, match="exited"):
        with anyio.fail_after(5):
            await watcher.wait_for_change()
    with anyio.fail_after(5):
        assert [s async for s in watcher.snapshots()] == [watcher.snapshot]


@pytest.fixture(scope="module")
def acl_etcd() -> AsyncIterator[EtcdServer]:
    """etcd with auth on: user ``viewer`` may read ``open/`` and nothing else."""
    with EtcdServer() as server:
        server.enable_auth(password="secret")
        server.etcdctl("role", "add", "reader")
        server.etcdctl("role", "grant-permission", "reader", "read", "open/", "--prefix=true")
        server.etcdctl("user", "add", "viewer:pw")
        server.etcdctl("user", "grant-role", "viewer", "reader")
        yield server


async def test_a_prefix_this_user_may_not_read_fails_fast_and_clearly(
    acl_etcd: EtcdServer,
) -> None:
    with pytest.warns(UserWarning, match="plaintext"):
        client = await aiodiscovery.connect(acl_etcd.url, username="viewer", password="pw")
    try:
        before = client.statistics().authentications
        with anyio.fail_after(10), pytest.raises(PermissionDeniedError, match="closed/svc"):
            async with Watcher(client, "closed/svc"):
                pass
        em = EndpointManager(client, "closed/svc")
        with anyio.fail_after(10), pytest.raises(PermissionDeniedError):
            async with contextlib.aclosing(em.watch()) as batches:
                await anext(batches)
        # One renewal per attempt at most, then the answer: no Authenticate every few seconds.
        assert client.statistics().authentications - before <= 2
        assert client.statistics().watches == 0
        async with Watcher(client, "open/svc") as allowed:
            assert len(allowed.snapshot) == 0
    finally:
        await client.close()


async def test_an_unclosed_client_warns(etcd: EtcdServer) -> None:
    client = await aiodiscovery.connect(etcd.url)
    await client.close()
    with pytest.warns(ResourceWarning, match="unclosed"):
        leaked = await aiodiscovery.connect(etcd.url)
        leaked.__del__()
    await leaked.close()
