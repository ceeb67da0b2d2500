"""The watch-history checker of the testing kit: real etcd, real clients, planted faults.

The records come from real etcd and real clients; the planted faults are edits of the recorded
stream data (a double of what a client delivered), so that the checker is seen to catch each
kind of fault it claims to catch.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import anyio
import pytest
from aetcd import rpc

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, Update, Watcher
from aiodiscovery.testing import (
    EtcdHistory,
    EtcdServer,
    TcpProxy,
    WatchRecord,
    check_history,
)
from aiodiscovery.testing._watch_record import Delivery

from .helpers import until

pytestmark = pytest.mark.anyio


@dataclass
class Recorded:
    history: EtcdHistory
    batches: WatchRecord
    updates: WatchRecord
    snapshots: WatchRecord
    other: WatchRecord

    @property
    def records(self) -> list[WatchRecord]:
        return [self.batches, self.updates, self.snapshots, self.other]


async def settle(history: EtcdHistory, records: list[WatchRecord], revision: int) -> None:
    """Wait until every record and the history reached ``revision``."""
    await history.catch_up(revision)
    await until(lambda: all(r.last_revision >= revision for r in records if r.name != "updates"))


@pytest.fixture(scope="module")
async def recorded(anyio_backend: str) -> AsyncIterator[Recorded]:
    """One scenario through every kind of reader: single puts, a multi-key transaction, a bad
    value, deletes, and a compaction while one client's stream was cut (so it re-lists)."""
    service = "history/svc"
    async with EtcdServer() as etcd, TcpProxy(etcd.client_port) as proxy:
        direct = await aiodiscovery.connect(etcd.url)
        cut_off = await aiodiscovery.connect(proxy.url)
        try:
            em = EndpointManager(direct, service)
            await em.add_endpoint(f"{service}/a", Endpoint("10.0.0.1:1"))
            async with EtcdHistory(etcd.url, f"{service}/") as history:
                recorded = Recorded(
                    history,
                    WatchRecord("batches"),
                    WatchRecord("updates"),
                    WatchRecord("snapshots"),
                    WatchRecord("other"),
                )
                async with Watcher(direct, service) as watcher, anyio.create_task_group() as tg:
                    tg.start_soon(recorded.batches.follow_batches, em)
                    tg.start_soon(recorded.updates.follow_updates, em)
                    tg.start_soon(recorded.snapshots.follow_watcher, watcher)
                    tg.start_soon(recorded.other.follow_batches, EndpointManager(cut_off, service))
                    await until(lambda: all(r.deliveries for r in recorded.records))
                    await em.update(
                        [
                            Update.add(f"{service}/b", Endpoint("10.0.0.2:1")),
                            Update.add(f"{service}/c", Endpoint("10.0.0.3:1", {"zone": "z"})),
                        ]
                    )
                    await direct.put(f"{service}/bad".encode(), b"not json")
                    await em.delete_endpoint(f"{service}/a")
                    await em.add_endpoint(f"{service}/b", Endpoint("10.0.0.2:2"))
                    revision = (await em.list_batch()).revision
                    await settle(history, recorded.records, revision)
                    proxy.cut()
                    await em.update([Update.delete(f"{service}/b"), Update.delete(f"{service}/c")])
                    await em.add_endpoint(f"{service}/d", Endpoint("10.0.0.4:1"))
                    await direct.put(b"history-unrelated", b"x")
                    revision = (await direct.get(b"history-unrelated")).mod_revision
                    await direct.compact(revision)
                    proxy.heal()
                    await em.update([Update.add(f"{service}/e", Endpoint("10.0.0.5:1"))])
                    revision = (await em.list_batch()).revision
                    await settle(history, recorded.records, revision)
                    tg.cancel_scope.cancel()
                yield recorded
        finally:
            await direct.close()
            await cut_off.close()


async def test_real_clients_keep_every_property(recorded: Recorded) -> None:
    check = check_history(recorded.history, recorded.records)
    check.assert_ok()
    # Every kind of record was held against etcd, the cut-off client re-listed after the
    # compaction and the re-list counted as a jump of state, not as a gap.
    assert check.checked >= 10 and check.unverified == 0
    assert sum(d.relist for d in recorded.other.deliveries) >= 2
    assert check.relists >= 3
    assert recorded.history.holes == [] and recorded.history.stream_violations == []


def planted(recorded: Recorded) -> tuple[WatchRecord, list[Delivery]]:
    """A copy of the batches record to plant a fault in, and its deliveries."""
    record = copy.deepcopy(recorded.batches)
    record.name = "planted"
    return record, record.deliveries


def multi_key(deliveries: list[Delivery], last: bool = False) -> int:
    """The first (or last) batch of a two-key transaction."""
    found = [i for i, d in enumerate(deliveries) if len(d.updates) == 2 and not d.relist]
    assert len(found) >= 2
    return found[-1] if last else found[0]


def violated(recorded: Recorded, record: WatchRecord) -> set[str]:
    check = check_history(recorded.history, [recorded.batches, record])
    assert not check.ok
    assert {v.client for v in check.violations} == {"planted"}, check.violations
    return {v.property for v in check.violations}


async def test_a_dropped_event_breaks_reliable(recorded: Recorded) -> None:
    record, deliveries = planted(recorded)
    i = multi_key(deliveries, last=True)
    deliveries[i] = replace(deliveries[i], updates=deliveries[i].updates[:1])
    assert {"reliable", "view"} <= violated(recorded, record)


async def test_a_dropped_batch_after_a_list_breaks_resumable(recorded: Recorded) -> None:
    record, deliveries = planted(recorded)
    first_change = next(i for i, d in enumerate(deliveries) if d.updates and not d.relist)
    del deliveries[first_change]
    assert "resumable" in violated(recorded, record)


async def test_a_duplicated_event_breaks_unique(recorded: Recorded) -> None:
    record, deliveries = planted(recorded)
    i = multi_key(deliveries)
    # The transaction's batch comes again with the next one's revision.
    again = replace(deliveries[i], revision=deliveries[i + 1].revision)
    deliveries.insert(i + 1, again)
    assert "unique" in violated(recorded, record)


async def test_an_event_twice_in_a_batch_breaks_unique(recorded: Recorded) -> None:
    record, deliveries = planted(recorded)
    i = multi_key(deliveries)
    d = deliveries[i]
    deliveries[i] = replace(d, updates=(*d.updates, d.updates[0]))
    assert "unique" in violated(recorded, record)


async def test_a_split_revision_breaks_atomic(recorded: Recorded) -> None:
    record, deliveries = planted(recorded)
    i = multi_key(deliveries)
    d = deliveries[i]
    deliveries[i : i + 1] = [replace(d, updates=d.updates[:1]), replace(d, updates=d.updates[1:])]
    assert "atomic" in violated(recorded, record)


async def test_a_revision_going_back_breaks_ordered(recorded: Recorded) -> None:
    record, deliveries = planted(recorded)
    i = multi_key(deliveries)
    deliveries[i], deliveries[i + 1] = deliveries[i + 1], deliveries[i]
    assert "ordered" in violated(recorded, record)


async def test_other_events_for_a_revision_break_same_events(recorded: Recorded) -> None:
    record, deliveries = planted(recorded)
    i = multi_key(deliveries)
    d = deliveries[i]
    wrong = Update.add(d.updates[0].key, Endpoint("10.9.9.9:9"))
    deliveries[i] = replace(d, updates=(wrong, *d.updates[1:]))
    assert {"same_events", "reliable", "view"} <= violated(recorded, record)


async def test_a_wrong_snapshot_breaks_view(recorded: Recorded) -> None:
    record = copy.deepcopy(recorded.snapshots)
    record.name = "planted"
    last = record.deliveries[-1]
    assert last.view is not None
    record.deliveries[-1] = replace(last, view={**last.view, "history/svc/ghost": Endpoint("x")})
    assert violated(recorded, record) == {"view"}


async def test_a_lost_delete_in_a_relist_breaks_view(recorded: Recorded) -> None:
    record = copy.deepcopy(recorded.other)
    record.name = "planted"
    i = max(i for i, d in enumerate(record.deliveries) if d.relist)
    d = record.deliveries[i]
    record.deliveries[i] = replace(d, updates=tuple(u for u in d.updates if u.endpoint))
    assert violated(recorded, record) == {"view"}


async def test_revisionless_batches_are_matched_to_a_revision(recorded: Recorded) -> None:
    record = copy.deepcopy(recorded.updates)
    record.name = "planted"
    record.deliveries.insert(2, Delivery(None, (Update.add("history/svc/ghost", Endpoint("g")),)))
    assert violated(recorded, record) == {"view"}


async def test_records_travel_as_json(recorded: Recorded) -> None:
    for record in recorded.records:
        again = WatchRecord.from_json(record.to_json())
        assert again.deliveries == record.deliveries
    assert check_history(recorded.history, recorded.records).to_json()[
        "violations"
    ] == dict.fromkeys(
        ("ordered", "unique", "atomic", "reliable", "resumable", "same_events", "view"), 0
    )


def event(revision: int, key: str) -> rpc.Event:
    kv = rpc.KeyValue(key=key.encode(), value=b"{}", mod_revision=revision)
    return rpc.Event(type=rpc.Event.PUT, kv=kv)


async def test_etcds_own_stream_is_checked_too() -> None:
    history = EtcdHistory("127.0.0.1:1", "x/")
    last = [10]
    # A duplicate event, a revision split over two responses, one going back, one replayed.
    history._record(rpc.WatchResponse(events=[event(11, "x/a"), event(11, "x/a")]), 10, last)
    history._record(rpc.WatchResponse(events=[event(11, "x/b")]), 10, last)
    history._record(rpc.WatchResponse(events=[event(12, "x/a"), event(11, "x/c")]), 10, last)
    history._record(rpc.WatchResponse(events=[event(10, "x/d")]), 10, last)
    kinds = [v.property for v in history.stream_violations]
    assert kinds == ["unique", "atomic", "ordered", "resumable"]


async def test_the_recorder_authenticates_and_outlives_its_token() -> None:
    async with EtcdServer(extra_args=["--auth-token-ttl=1"]) as etcd:
        await anyio.to_thread.run_sync(etcd.enable_auth, "root", "secret")
        with pytest.warns(UserWarning, match="plaintext"):
            client = await aiodiscovery.connect(etcd.url, username="root", password="secret")
        try:
            em = EndpointManager(client, "auth/svc")
            async with EtcdHistory(etcd.url, "auth/svc/", username="root", password="secret") as h:
                await em.add_endpoint("auth/svc/a", Endpoint("10.0.0.1:1"))
                # The scenario is the token's lifetime passing (etcd drops it 1 s after its last
                # use, unobservably): the watch goes on, and every resume authenticates again.
                await anyio.sleep(1.5)
                await em.add_endpoint("auth/svc/b", Endpoint("10.0.0.2:1"))
                await h.catch_up((await em.list_batch()).revision)
            assert [e.key for e in h.events] == ["auth/svc/a", "auth/svc/b"]
            assert h.stream_violations == []
        finally:
            await client.close()
