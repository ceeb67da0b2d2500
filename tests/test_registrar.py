"""Registrar against real etcd: registered exactly while the block runs, whatever etcd does."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import grpc
import pytest
from aetcd import rpc
from anyio.abc import TaskStatus

import aiodiscovery
from aiodiscovery import (
    Endpoint,
    EtcdClient,
    EtcdUnavailableError,
    Registrar,
    RegistrarState,
    decode_endpoint,
    encode_endpoint,
)
from aiodiscovery._registrar import _RETRY_CAP
from aiodiscovery.testing import EtcdCluster, EtcdServer, free_port

from .helpers import eventually, until

pytestmark = pytest.mark.anyio


async def read_key(client: EtcdClient, key: str) -> tuple[bytes, int] | None:
    """The value and lease of ``key``, or ``None`` if it does not exist."""
    reply = await client.members.active.kv.Range(rpc.RangeRequest(key=key.encode()), timeout=5)
    if not reply.kvs:
        return None
    return reply.kvs[0].value, reply.kvs[0].lease


async def lease_ttl(client: EtcdClient, lease: int) -> int:
    """etcd's remaining TTL of ``lease``: -1 once it is revoked or expired."""
    reply = await client.members.active.lease.LeaseTimeToLive(
        rpc.LeaseTimeToLiveRequest(ID=lease), timeout=5
    )
    return int(reply.TTL)


async def run_etcdctl(etcd: EtcdServer, *args: str) -> str:
    # etcdctl is a blocking subprocess; off the loop, the registrar keeps running meanwhile.
    return await anyio.to_thread.run_sync(lambda: etcd.etcdctl(*args))


async def stats_reach(reg: Registrar, field: str, value: int, timeout: float = 15.0) -> None:
    await eventually(lambda: _stat(reg, field), lambda current: current >= value, timeout=timeout)


async def _stat(reg: Registrar, field: str) -> int:
    return int(getattr(reg.statistics(), field))


# -- construction ------------------------------------------------------------------------------


async def test_key_value_and_validation(client: EtcdClient, service: str) -> None:
    reg = Registrar(client, service, "10.0.0.5:50051", metadata={"weight": 2})
    assert reg.key == f"{service}/10.0.0.5:50051"
    assert reg.endpoint == Endpoint("10.0.0.5:50051", {"weight": 2})
    assert reg.state is RegistrarState.REGISTERING and reg.lease_id is None
    assert "registering" in repr(reg) and reg.key in repr(reg)
    assert Registrar(client, f"etcd:///{service}", Endpoint("a:1"), key=f"{service}/id-7").key == (
        f"{service}/id-7"
    )
    with pytest.raises(ValueError, match="outside the service prefix"):
        Registrar(client, service, "a:1", key=f"{service}_other/a:1")
    with pytest.raises(ValueError, match="ttl"):
        Registrar(client, service, "a:1", ttl=0)
    with pytest.raises(ValueError, match="not both"):
        Registrar(client, service, Endpoint("a:1", "x"), metadata="y")
    with pytest.raises(TypeError, match="JSON"):
        Registrar(client, service, "a:1", metadata=object())


# -- the block ---------------------------------------------------------------------------------


async def test_registered_while_the_block_runs_and_gone_right_after(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    # DEBUG: a stream given up on is logged there, and counted below.
    caplog.set_level(logging.DEBUG, logger="aiodiscovery")
    endpoint = Endpoint("10.0.0.5:50051", {"zone": "a"})
    async with Registrar(client, service, endpoint, ttl=1) as reg:
        assert reg.state is RegistrarState.REGISTERED and reg.registered
        await reg.wait_registered()
        lease = reg.lease_id
        assert lease is not None
        found = await read_key(client, reg.key)
        assert found == (encode_endpoint(endpoint), lease)
        assert decode_endpoint(reg.key, found[0]) == endpoint
        assert json.loads(found[0]) == {
            "Op": 0,
            "Addr": "10.0.0.5:50051",
            "Metadata": {"zone": "a"},
        }
        # Several TTLs: the key must be there, on the same lease, at every look.
        with anyio.fail_after(15):
            while reg.statistics().keepalive_round_trips < 10:
                assert await read_key(client, reg.key) == found
                await anyio.sleep(0.1)
        stats = reg.statistics()
        assert stats.registrations == 1 and stats.losses == 0 and stats.re_registrations == 0
        # One long-lived stream each, not one per refresh: a new one only replaces one that failed
        # (with a TTL of 1 s a keep-alive reply is given up on after 1/3 s, which a loaded machine
        # can take now and then; each such replacement is logged).
        replaced = {
            kind: sum(marker in r.getMessage() for r in caplog.records)
            for kind, marker in (("keepalive", "opening a new stream"), ("watch", "watching again"))
        }
        assert stats.keepalive_streams == 1 + replaced["keepalive"], (stats, replaced)
        assert stats.watch_streams == 1 + replaced["watch"], (stats, replaced)
        assert stats.lease_id == lease and stats.ttl == 1 and stats.last_refresh is not None
        assert f"lease={lease:x}" in repr(reg)
    assert await read_key(client, reg.key) is None
    assert await lease_ttl(client, lease) == -1
    assert reg.state is RegistrarState.CLOSED and reg.lease_id is None
    with pytest.raises(RuntimeError, match="closed"):
        await reg.wait_registered()
    assert any("registered" in r.message and reg.key in r.message for r in caplog.records)
    assert any("unregistered" in r.message for r in caplog.records)


async def test_an_error_in_the_block_propagates_unchanged_and_revokes(
    client: EtcdClient, service: str
) -> None:
    reg = Registrar(client, service, "10.0.0.6:1", ttl=5)
    with pytest.raises(ValueError, match="boom"):
        async with reg:
            lease = reg.lease_id
            raise ValueError("boom")
    assert await read_key(client, reg.key) is None
    assert lease is not None and await lease_ttl(client, lease) == -1
    with pytest.raises(RuntimeError, match="only once"):
        await reg.__aenter__()


async def test_cancelled_holder_revokes_the_lease(client: EtcdClient, service: str) -> None:
    async def serve(*, task_status: TaskStatus[Registrar]) -> None:
        async with Registrar(client, service, "10.0.0.7:50051", ttl=5) as reg:
            task_status.started(reg)
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        reg = await tg.start(serve)
        lease = reg.lease_id
        assert lease is not None and await read_key(client, reg.key) is not None
        tg.cancel_scope.cancel()
    # No waiting: the revoke happened before the holder finished.
    assert await read_key(client, reg.key) is None
    assert await lease_ttl(client, lease) == -1
    assert reg.state is RegistrarState.CLOSED


async def test_registrar_killed_with_sigkill_expires_after_about_one_ttl(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    ttl = 1
    code = (
        "import anyio, sys, aiodiscovery\n"
        "async def main():\n"
        "    client = await aiodiscovery.connect(sys.argv[1])\n"
        f"    async with aiodiscovery.Registrar(client, sys.argv[2], '10.9.9.9:1', ttl={ttl}):\n"
        "        print('ready', flush=True)\n"
        "        await anyio.sleep_forever()\n"
        "anyio.run(main)\n"
    )
    key = f"{service}/10.9.9.9:1"
    async with await anyio.open_process(
        [sys.executable, "-c", code, etcd.url, service], stderr=subprocess.STDOUT
    ) as child:
        assert child.stdout is not None
        output = b""
        with anyio.fail_after(20):
            while b"ready" not in output:
                try:
                    output += await child.stdout.receive()
                except anyio.EndOfStream:
                    pytest.fail(f"the child exited: {output.decode(errors='replace')}")
        assert await read_key(client, key) is not None
        child.kill()
        await child.wait()
        killed = time.monotonic()
        # Nobody revoked anything: the key is still there, and goes only when the lease expires.
        assert await read_key(client, key) is not None
        await eventually(lambda: read_key(client, key), lambda found: found is None, timeout=10)
        elapsed = time.monotonic() - killed
    print(f"SIGKILL: key gone {elapsed:.2f} s after the kill (TTL {ttl} s)")
    # Between 2/3 of a TTL (the last refresh) and the TTL plus etcd's expiry slack.
    assert 0.3 < elapsed < ttl + 3.5, elapsed


# -- losing and regaining ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["lease revoke", "del"])
async def test_lease_revoked_or_key_deleted_comes_back(
    etcd: EtcdServer, client: EtcdClient, service: str, fault: str
) -> None:
    async with Registrar(client, service, "10.0.0.8:50051", ttl=1) as reg:
        old = reg.lease_id
        assert old is not None
        if fault == "del":
            await run_etcdctl(etcd, "del", reg.key)
        else:
            await run_etcdctl(etcd, "lease", "revoke", f"{old:x}")
        found = await eventually(
            lambda: read_key(client, reg.key),
            lambda found: found is not None and found[1] != old,
            timeout=5,
        )
        assert found is not None
        await reg.wait_registered()
        assert found[1] == reg.lease_id
        stats = reg.statistics()
        assert stats.losses == 1 and stats.re_registrations == 1
        reason = stats.last_loss_reason or ""
        if fault == "del":
            # Only the watch can notice: the lease itself is still alive.
            assert "deleted" in reason, reason
        else:
            # The watch's DELETE or the keep-alive's TTL=0 reply, whichever arrives first.
            assert "deleted" in reason or "expired or revoked" in reason, reason
        # The old lease is revoked too (after a del it was still alive, just empty).
        await eventually(lambda: lease_ttl(client, old), lambda ttl: ttl == -1, timeout=5)
        # It keeps being refreshed on the new lease.
        before = stats.keepalive_round_trips
        await stats_reach(reg, "keepalive_round_trips", before + 3)
        assert await read_key(client, reg.key) == found
    assert await read_key(client, reg.key) is None


async def test_etcd_down_longer_than_the_ttl_then_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiodiscovery")
    ttl = 1
    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url)
        try:
            async with Registrar(client, "svc/outage", "10.0.1.1:1", ttl=ttl) as reg:
                await stats_reach(reg, "keepalive_round_trips", 1)
                old = reg.lease_id
                assert old is not None
                etcd.kill()
                killed = time.monotonic()
                with anyio.fail_after(ttl + 3):
                    await reg.wait_lost()
                assert reg.state is RegistrarState.LOST and not reg.registered
                lost_after = time.monotonic() - killed
                assert lost_after <= ttl + 1, lost_after
                assert "keep-alive" in (reg.statistics().last_loss_reason or "")
                await etcd.restart()
                back = time.monotonic()
                channel_ready: list[float] = []

                async def note_channel_ready() -> None:
                    ready = grpc.ChannelConnectivity.READY
                    await until(lambda: client.channel.get_state() == ready, timeout=10)
                    channel_ready.append(time.monotonic())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(note_channel_ready)
                    with anyio.fail_after(10):
                        await reg.wait_registered()
                    registered = time.monotonic()
                    # The put went through: the channel is READY, the poll sees it at once.
                    await until(lambda: bool(channel_ready), timeout=5)
                delay = registered - back
                own_delay = registered - max(back, channel_ready[0])
                # etcd's own restart extended the old lease: the registrar must not rely on it.
                found = await read_key(client, reg.key)
                assert found is not None and found[1] == reg.lease_id != old
                await eventually(lambda: lease_ttl(client, old), lambda t: t == -1, timeout=5)
                assert reg.statistics().re_registrations == 1
                print(
                    f"lost {lost_after:.2f} s after the kill; back {delay:.2f} s after etcd was, "
                    f"{own_delay:.2f} s after the channel reconnected"
                )
                # What the registrar adds once etcd is reachable: at most one retry delay
                # (_RETRY_CAP), then a grant and a put; 1 s of slack for those two requests and a
                # loaded machine. (A stalled request would take the 5 s request timeout.)
                assert own_delay < _RETRY_CAP + 1.0, own_delay
                # The whole delay adds gRPC's own reconnect backoff, which may have grown to its
                # maximum (2 s, +20 % jitter: _channel_options in _etcd.py) while etcd was down;
                # etcd.restart() returns only once etcd reports healthy, so its health polling
                # makes `back` late, never the delay longer.
                assert delay < 2.0 * 1.2 + _RETRY_CAP + 1.0, delay
        finally:
            await client.close()


async def test_a_frozen_etcd_costs_a_fresh_stream_not_the_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url)
        try:
            async with Registrar(client, "svc/frozen", "10.0.1.2:1", ttl=3) as reg:
                await stats_reach(reg, "keepalive_round_trips", 1)
                lease, before = reg.lease_id, reg.statistics()
                # SIGSTOP: the connection stays open and a keep-alive just never gets its reply.
                # The registrar gives up on that stream after one refresh interval and asks again
                # on a new one, which etcd answers once it runs again, within the TTL.
                etcd.stop()
                try:
                    # Expected after about 2 s (the next refresh is at most TTL/3 away, then
                    # TTL/3 of patience). Polled closely: the new stream's keep-alive must be
                    # answered before the lease's TTL runs out, so etcd resumes right away.
                    await until(
                        lambda: reg.statistics().keepalive_streams > before.keepalive_streams, 3
                    )
                finally:
                    etcd.resume()
                await stats_reach(reg, "keepalive_round_trips", before.keepalive_round_trips + 2)
                assert reg.statistics().losses == 0 and reg.lease_id == lease

                # Nor can a frozen etcd hold up leaving the block for longer than revoke_timeout.
                reg.revoke_timeout = 0.5
                etcd.stop()
                left = time.monotonic()
            assert time.monotonic() - left < 1.5
            assert any("took longer than 0.5 s" in r.message for r in caplog.records)
            etcd.resume()
        finally:
            await client.close()


async def test_killing_the_member_in_use_never_lapses_the_registration() -> None:
    ttl = 5
    async with EtcdCluster(3) as cluster:
        client = await aiodiscovery.connect(cluster.urls)
        # The member in use, made leader: its death costs both the connection and the leader.
        first = next(m for m in cluster.members if m.url == client.members.active.url)
        observer_member = next(m for m in cluster.members if m is not first)
        await make_leader(cluster, first)
        observer = await aiodiscovery.connect(observer_member.url)
        try:
            async with Registrar(client, "svc/cluster", "10.0.2.1:1", ttl=ttl) as reg:
                lease = reg.lease_id
                start = (
                    await observer.members.active.kv.Range(rpc.RangeRequest(key=b"x"), timeout=5)
                ).header
                async with watch_events(observer, reg.key, start.revision + 1) as events:
                    await stats_reach(reg, "keepalive_round_trips", 1)
                    before = reg.statistics()
                    first.kill()
                    killed = time.monotonic()
                    # Longer than a TTL of keep-alives through the surviving members.
                    await stats_reach(
                        reg, "keepalive_round_trips", before.keepalive_round_trips + 4, 20
                    )
                    assert time.monotonic() - killed > ttl
                    after = reg.statistics()
                    print(
                        f"cluster: {after.keepalive_streams - before.keepalive_streams} new "
                        f"keep-alive stream(s) after killing the leader in use; no loss"
                    )
                    assert after.keepalive_streams > before.keepalive_streams
                    assert after.losses == 0 and reg.lease_id == lease and reg.registered
                    await observer.put(f"{reg.key}/done".encode(), b"")
                    with anyio.fail_after(10):
                        await events.done.wait()
                assert [e for e in events.seen if e == "DELETE"] == []
                found = await read_key(observer, reg.key)
                assert found is not None and found[1] == lease
        finally:
            await client.close()
            await observer.close()


class _TokenRefusedCall:
    """A LeaseKeepAlive call that etcd refuses for its token, as versions after 3.5.1 may."""

    async def write(self, request: object) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="etcdserver: invalid auth token",
        )

    async def read(self) -> object:
        raise AssertionError("never read: the write failed")

    def cancel(self) -> bool:
        return True

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED


class _LeaseStub:
    """The client's lease stub, with the first keep-alive stream refused for its token; records
    the token every keep-alive stream is opened with."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.tokens: list[str | None] = []

    def LeaseKeepAlive(self, *, metadata: tuple[tuple[str, str], ...]) -> Any:
        self.tokens.append(dict(metadata).get("token"))
        if len(self.tokens) == 1:
            return _TokenRefusedCall()
        return self.real.LeaseKeepAlive(metadata=metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_keep_alive_refused_for_its_token_renews_it_before_the_next_stream() -> None:
    password = "keep-alive-pw"
    async with EtcdServer() as etcd:
        await anyio.to_thread.run_sync(lambda: etcd.enable_auth(password=password))
        client = await aiodiscovery.connect(etcd.url, username="root", password=password)
        try:
            stub = _LeaseStub(client.members.active.lease)
            client.members.active.lease = stub
            async with Registrar(client, "svc/token", "10.0.4.1:1", ttl=3) as reg:
                await stats_reach(reg, "keepalive_round_trips", 1)
                stats = reg.statistics()
                assert stats.keepalive_streams == 2 and stats.losses == 0, stats
            # The second stream already carried the token renewed after the first was refused.
            first, second = stub.tokens[:2]
            assert first is not None and second is not None and first != second
            assert client.statistics().token_rejections == 1
            assert client.statistics().authentications == 2
        finally:
            await client.close()


async def test_etcd_unreachable_at_start_fails_fast() -> None:
    client = EtcdClient(f"http://127.0.0.1:{free_port()}")
    await client.connect()
    try:
        reg = Registrar(client, "svc/nowhere", "10.0.3.1:1", ttl=2, start_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(
            EtcdUnavailableError, match=r"could not register 'svc/nowhere/10\.0\.3\.1:1'"
        ):
            async with reg:
                pytest.fail("entered without etcd")
        assert time.monotonic() - started < 3.0
        assert reg.state is RegistrarState.CLOSED
    finally:
        await client.close()


# -- helpers for the cluster test --------------------------------------------------------------


async def make_leader(cluster: EtcdCluster, member: EtcdServer) -> None:
    """Move raft leadership to ``member`` so that killing it also costs an election."""
    status = json.loads(
        await anyio.to_thread.run_sync(
            lambda: member.etcdctl("endpoint", "status", "--write-out=json")
        )
    )
    member_id = status[0]["Status"]["header"]["member_id"]
    leader = await eventually(
        lambda: anyio.to_thread.run_sync(cluster.leader), lambda m: m is not None
    )
    assert leader is not None
    if leader is not member:
        await anyio.to_thread.run_sync(
            lambda: leader.etcdctl("move-leader", f"{member_id:x}", endpoints=leader.url)
        )
    await eventually(lambda: anyio.to_thread.run_sync(cluster.leader), lambda m: m is member)


class _Events:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.done = anyio.Event()


@asynccontextmanager
async def watch_events(client: EtcdClient, key: str, start: int) -> AsyncIterator[_Events]:
    """Record every event on ``key`` (and ``key/done``, which ends the recording)."""
    events = _Events()
    prefix = key.encode()

    async def record() -> None:
        call: Any = rpc.WatchStub(client.channel).Watch()
        try:
            create = rpc.WatchCreateRequest(
                key=prefix, range_end=prefix + b"0", start_revision=start
            )
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                reply = await call.read()
                assert reply is not grpc.aio.EOF and not reply.canceled
                for event in reply.events:
                    if event.kv.key == prefix + b"/done":
                        events.done.set()
                        return
                    events.seen.append("DELETE" if event.type == rpc.Event.DELETE else "PUT")
        finally:
            call.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(record)
        yield events
        tg.cancel_scope.cancel()
