"""LeaseKeeper against real etcd: one lease, shared by several Registrars, left in any order."""

from __future__ import annotations

import dataclasses
import time

import anyio
import pytest

from aiodiscovery import (
    EtcdClient,
    EtcdUnavailableError,
    LeaseKeeper,
    LeaseState,
    Registrar,
    RegistrarState,
    connect,
)
from aiodiscovery.testing import EtcdServer, free_port

from .helpers import eventually
from .test_registrar import (
    LOOP_SLACK,
    counted_since,
    grpc_counts,
    lease_ttl,
    read_key,
    run_etcdctl,
    stats_reach,
)

pytestmark = pytest.mark.anyio


async def test_a_keeper_grants_refreshes_and_revokes(client: EtcdClient) -> None:
    keeper = LeaseKeeper(client, ttl=2)
    assert keeper.state is LeaseState.GRANTING and keeper.lease_id is None
    async with keeper:
        lease = keeper.lease_id
        assert lease is not None and keeper.alive
        assert await keeper.wait_alive() == lease
        await stats_reach(keeper, "keepalive_round_trips", 3)
        assert await lease_ttl(client, lease) >= 0
        stats = keeper.statistics()
        assert (stats.state, stats.lease_id, stats.ttl, stats.keys) == (
            LeaseState.ALIVE,
            lease,
            2,
            (),
        )
        assert stats.grants == 1 and stats.losses == 0 and stats.last_refresh is not None
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.grants = 2  # type: ignore[misc]
        assert f"lease={lease:x}" in repr(keeper)
    assert await lease_ttl(client, lease) == -1
    assert keeper.state is LeaseState.CLOSED and keeper.lease_id is None
    assert keeper.statistics().revokes == 1
    with pytest.raises(RuntimeError, match="closed"):
        await keeper.wait_alive()
    with pytest.raises(RuntimeError, match="only once"):
        await keeper.__aenter__()


async def test_registrars_share_one_lease_and_one_keep_alive_stream(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    before = await grpc_counts(etcd)
    async with (
        LeaseKeeper(client, ttl=2) as keeper,
        Registrar(client, f"{service}-a", "10.0.5.1:1", lease=keeper) as a,
        Registrar(client, f"{service}-b", "10.0.5.1:1", lease=keeper) as b,
    ):
        lease = keeper.lease_id
        assert lease is not None and a.lease_id == b.lease_id == lease
        assert a.lease is b.lease is keeper and a.ttl == b.ttl == 2
        for reg in (a, b):
            found = await read_key(client, reg.key)
            assert found is not None and found[1] == lease
        assert keeper.statistics().keys == (a.key, b.key)
        await stats_reach(keeper, "keepalive_round_trips", 6)
        stats = a.statistics()
        assert stats.shared_lease and stats.keepalive_round_trips >= 6
        # The lease figures are the keeper's, the same for both.
        assert b.statistics().keepalive_streams == stats.keepalive_streams
    after = await grpc_counts(etcd)
    # One keep-alive stream for both keys (replaced only when a reply was overdue), as etcd
    # itself counted; one lease granted.
    keeper_stats = keeper.statistics()
    streams = counted_since(before, after, "LeaseKeepAlive started")
    assert streams == keeper_stats.keepalive_streams
    assert streams * 3 <= keeper_stats.keepalive_round_trips, keeper_stats
    assert counted_since(before, after, "LeaseGrant started") == keeper_stats.grants == 1
    assert await read_key(client, a.key) is None and await read_key(client, b.key) is None
    assert await lease_ttl(client, lease) == -1


async def test_a_lost_shared_lease_puts_every_key_again(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    async with (
        LeaseKeeper(client, ttl=2) as keeper,
        Registrar(client, f"{service}-a", "10.0.5.2:1", lease=keeper) as a,
        Registrar(client, f"{service}-b", "10.0.5.2:1", lease=keeper) as b,
    ):
        old = keeper.lease_id
        assert old is not None
        await run_etcdctl(etcd, "lease", "revoke", f"{old:x}")
        for reg in (a, b):
            found = await eventually(
                lambda reg=reg: read_key(client, reg.key),
                lambda found: found is not None and found[1] != old,
            )
            assert found is not None and found[1] == keeper.lease_id
            await reg.wait_registered()
            stats = reg.statistics()
            assert stats.losses == 1 and stats.re_registrations == 1, stats
        assert keeper.statistics().losses == 1 and keeper.statistics().grants == 2
        assert a.lease_id == b.lease_id == keeper.lease_id != old


async def test_registrars_left_out_of_order(client: EtcdClient, service: str) -> None:
    """A server deregisters one of its services first: enter A then B, leave A then B."""
    a = Registrar(client, f"{service}-a", "10.0.6.1:1", ttl=2)
    b = Registrar(client, f"{service}-b", "10.0.6.1:1", ttl=2)
    await a.__aenter__()
    await b.__aenter__()
    try:
        await a.__aexit__(None, None, None)
        # A's key went at once (its lease is revoked); B's is still kept alive.
        assert await read_key(client, a.key) is None
        assert a.state is RegistrarState.CLOSED
        round_trips = b.statistics().keepalive_round_trips
        await stats_reach(b, "keepalive_round_trips", round_trips + 3)
        assert b.registered and await read_key(client, b.key) is not None
    finally:
        await b.__aexit__(None, None, None)
    assert await read_key(client, b.key) is None


async def test_a_registrar_entered_in_one_task_is_left_from_another(
    client: EtcdClient, service: str
) -> None:
    reg = Registrar(client, service, "10.0.6.3:1", ttl=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.__aenter__)
    # The task that entered it is gone; the registration is not.
    await stats_reach(reg, "keepalive_round_trips", 1)
    assert reg.registered and await read_key(client, reg.key) is not None
    await reg.__aexit__(None, None, None)
    assert reg.state is RegistrarState.CLOSED and await read_key(client, reg.key) is None


async def test_registrars_left_out_of_order_on_a_shared_lease(
    client: EtcdClient, service: str
) -> None:
    keeper = LeaseKeeper(client, ttl=2)
    await keeper.__aenter__()
    a = Registrar(client, f"{service}-a", "10.0.6.2:1", lease=keeper)
    b = Registrar(client, f"{service}-b", "10.0.6.2:1", lease=keeper)
    try:
        await a.__aenter__()
        await b.__aenter__()
        await a.__aexit__(None, None, None)
        # A's key is deleted at once; the lease lives on for B.
        assert await read_key(client, a.key) is None
        assert a.state is RegistrarState.CLOSED and a.statistics().deletes == 1
        round_trips = keeper.statistics().keepalive_round_trips
        await stats_reach(keeper, "keepalive_round_trips", round_trips + 3)
        found = await read_key(client, b.key)
        assert b.registered and found is not None and found[1] == keeper.lease_id
        assert keeper.statistics().keys == (b.key,)
        # Leaving the keeper before B ends B's registration too: the lease is revoked.
        lease = keeper.lease_id
        assert lease is not None
        await keeper.__aexit__(None, None, None)
        assert b.state is RegistrarState.CLOSED and b.lease_id is None
        assert await read_key(client, b.key) is None and await lease_ttl(client, lease) == -1
    finally:
        await b.__aexit__(None, None, None)
        await keeper.__aexit__(None, None, None)
    assert b.statistics().deletes == 0  # nothing left to delete after the revoke


async def test_report_lost_replaces_the_lease_at_once(client: EtcdClient, service: str) -> None:
    async with LeaseKeeper(client, ttl=30) as keeper:
        old = await keeper.wait_alive()
        # Someone else's word that etcd forgot the lease (a put under it was refused).
        keeper.report_lost(old + 1, "not ours: ignored")
        keeper.report_lost(old, "a put under it was refused")
        with anyio.fail_after(10):
            await keeper.wait_lost()
            new = await keeper.wait_alive()
        assert new != old
        stats = keeper.statistics()
        assert stats.losses == 1 and stats.last_loss_reason == "a put under it was refused"
        # The old lease is revoked in the background: its keys are not ours any more.
        await eventually(lambda: lease_ttl(client, old), lambda ttl: ttl == -1)


async def test_etcd_unreachable_at_start_fails_within_start_timeout() -> None:
    client = EtcdClient(f"http://127.0.0.1:{free_port()}")
    await client.connect()
    try:
        keeper = LeaseKeeper(client, ttl=2, start_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(EtcdUnavailableError, match=r"did not grant a lease within 1 s"):
            async with keeper:
                pytest.fail("entered without etcd")
        assert time.monotonic() - started < 1.0 + LOOP_SLACK
        assert keeper.state is LeaseState.CLOSED and keeper.statistics().grants >= 1
    finally:
        await client.close()


async def test_misuse_fails_clearly(etcd: EtcdServer, client: EtcdClient, service: str) -> None:
    keeper = LeaseKeeper(client, ttl=5)
    with pytest.raises(ValueError, match="ttl"):
        LeaseKeeper(client, ttl=0)
    with pytest.raises(ValueError, match="leave ttl= out"):
        Registrar(client, service, "10.0.7.1:1", ttl=7, lease=keeper)
    assert Registrar(client, service, "10.0.7.1:1", ttl=5, lease=keeper).ttl == 5
    with pytest.raises(TypeError, match="LeaseKeeper"):
        Registrar(client, service, "10.0.7.1:1", lease=object())  # type: ignore[arg-type]
    other = await connect(etcd.url)
    try:
        with pytest.raises(ValueError, match="another client"):
            Registrar(other, service, "10.0.7.1:1", lease=keeper)
    finally:
        await other.close()
    # Not entered yet: the Registrar says what to do, and writes nothing.
    reg = Registrar(client, service, "10.0.7.1:1", lease=keeper)
    with pytest.raises(RuntimeError, match="enter it before the Registrars"):
        await reg.__aenter__()
    assert reg.state is RegistrarState.CLOSED and await read_key(client, reg.key) is None
