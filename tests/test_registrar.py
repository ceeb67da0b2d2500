"""Registrar against real etcd: registered exactly while the block runs, whatever etcd does."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
import urllib.request
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
from aiodiscovery._registrar.timing import RETRY_CAP, attempt_timeout
from aiodiscovery.testing import EtcdCluster, EtcdServer, free_port

from .helpers import eventually, until

pytestmark = pytest.mark.anyio

#: What a loaded 2-core machine may add to any wake-up: the slack every timing bound below adds
#: to what the README promises.
LOOP_SLACK = 1.0


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


async def stats_reach(reg: Any, field: str, value: int, timeout: float = 15.0) -> None:
    """Wait until ``reg.statistics().<field>`` reaches ``value`` (a Registrar or a LeaseKeeper)."""
    await eventually(lambda: _stat(reg, field), lambda current: current >= value, timeout=timeout)


async def _stat(reg: Any, field: str) -> int:
    return int(getattr(reg.statistics(), field))


_METRIC = re.compile(
    r'^grpc_server_(started|msg_received)_total\{grpc_method="(\w+)",grpc_service="([\w.]+)"'
)


def _grpc_counts(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            match = _METRIC.match(line)
            if match is not None and match[3].startswith("etcdserverpb."):
                name = f"{match[2]} {'started' if match[1] == 'started' else 'received'}"
                counts[name] = counts.get(name, 0) + float(line.rsplit(" ", 1)[1])
    return counts


async def grpc_counts(etcd: EtcdServer) -> dict[str, float]:
    """What etcd itself counted since it started (its /metrics): calls and streams started
    (``"LeaseKeepAlive started"``, ``"Watch started"``, ``"Put started"``, ...) and request
    messages received (``"LeaseKeepAlive received"``, ...)."""
    return await anyio.to_thread.run_sync(_grpc_counts, etcd.url)


def counted_since(before: dict[str, float], after: dict[str, float], name: str) -> int:
    return int(after.get(name, 0) - before.get(name, 0))


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
    etcd: EtcdServer, client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiodiscovery")
    endpoint = Endpoint("10.0.0.5:50051", {"zone": "a"})
    before = await grpc_counts(etcd)
    async with Registrar(client, service, endpoint, ttl=2) as reg:
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
            while reg.statistics().keepalive_round_trips < 9:
                assert await read_key(client, reg.key) == found
                await anyio.sleep(0.1)
        stats = reg.statistics()
        assert stats.registrations == 1 and stats.losses == 0 and stats.re_registrations == 0
        assert stats.lease_id == lease and stats.ttl == 2 and stats.last_refresh is not None
        assert f"lease={lease:x}" in repr(reg)
    after = await grpc_counts(etcd)
    # etcd's own count of what reached it. One long-lived keep-alive stream, not one per
    # refresh: a stream is replaced only when a reply is overdue (2/3 s at TTL 2, which a loaded
    # machine can take now and then), so each one carried several refreshes.
    streams = counted_since(before, after, "LeaseKeepAlive started")
    assert streams == stats.keepalive_streams, (streams, stats)
    assert streams * 3 <= stats.keepalive_round_trips, stats
    messages = counted_since(before, after, "LeaseKeepAlive received")
    assert stats.keepalive_round_trips <= messages <= stats.keepalives_sent, (messages, stats)
    assert counted_since(before, after, "Watch started") == stats.watch_streams, stats
    assert await read_key(client, reg.key) is None
    assert await lease_ttl(client, lease) == -1
    assert reg.state is RegistrarState.CLOSED and reg.lease_id is None
    with pytest.raises(RuntimeError, match="closed"):
        await reg.wait_registered()
    assert any(r.message.startswith(f"registered {reg.key}") for r in caplog.records)
    assert any(r.message.startswith(f"unregistered {reg.key}") for r in caplog.records)


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
    # A TTL long enough that no refresh is ever late on a loaded machine: the losses counted are
    # the fault's alone (noticing either fault does not wait for the TTL).
    async with Registrar(client, service, "10.0.0.8:50051", ttl=5) as reg:
        old = reg.lease_id
        assert old is not None
        if fault == "del":
            await run_etcdctl(etcd, "del", reg.key)
        else:
            await run_etcdctl(etcd, "lease", "revoke", f"{old:x}")
        # A deleted key is written again under the same lease, which is still alive; a revoked
        # lease is replaced by a new one.
        found = await eventually(
            lambda: read_key(client, reg.key),
            lambda found: found is not None and (found[1] == old) == (fault == "del"),
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
            assert stats.leases_granted == 1 and await lease_ttl(client, old) >= 0  # alive
        else:
            # The watch's DELETE or the keep-alive's TTL=0 reply, whichever arrives first.
            assert "deleted" in reason or "expired or revoked" in reason, reason
            assert await lease_ttl(client, old) == -1
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
                with anyio.fail_after(ttl + 3):
                    await reg.wait_lost()
                assert reg.state is RegistrarState.LOST and not reg.registered
                last_refresh = reg.statistics().last_refresh
                assert last_refresh is not None
                # The promise: LOST at most one TTL after the last successful refresh.
                lost_after = time.time() - last_refresh
                assert lost_after <= ttl + LOOP_SLACK, lost_after
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
                    f"lost {lost_after:.2f} s after the last refresh; back {delay:.2f} s after "
                    f"etcd was, {own_delay:.2f} s after the channel reconnected"
                )
                # The promise: back within one retry delay (at most RETRY_CAP) plus a grant and
                # a put of etcd answering again. An attempt sent just before etcd answered may
                # take its whole per-attempt timeout first; the grant and the put are quick.
                bound = RETRY_CAP + attempt_timeout(client.timeout, ttl) + LOOP_SLACK
                assert own_delay < bound, own_delay
                # The whole delay adds gRPC's own reconnect backoff, which may have grown to its
                # maximum (2 s, +20 % jitter: _channel_options in _client.py) while etcd was
                # down; etcd.restart() returns only once etcd reports healthy, so its health
                # polling makes `back` late, never the delay longer.
                assert delay < 2.0 * 1.2 + bound, delay
        finally:
            await client.close()


async def test_a_frozen_etcd_costs_a_fresh_stream_not_the_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url)
        try:
            ttl = 6
            async with Registrar(client, "svc/frozen", "10.0.1.2:1", ttl=ttl) as reg:
                await stats_reach(reg, "keepalive_round_trips", 1)
                lease, before = reg.lease_id, reg.statistics()
                # SIGSTOP: the connection stays open and a keep-alive just never gets its reply.
                # The registrar gives up on that stream after one refresh interval and asks again
                # on a new one, which etcd answers once it runs again, within the TTL.
                etcd.stop()
                try:
                    # Expected within 2/3 of the TTL (the next refresh is at most TTL/3 away,
                    # then TTL/3 of patience). Polled closely: the new stream's keep-alive must
                    # be answered before the lease's TTL runs out, so etcd resumes right away.
                    await until(
                        lambda: reg.statistics().keepalive_streams > before.keepalive_streams,
                        2 * ttl / 3 + LOOP_SLACK,
                    )
                finally:
                    etcd.resume()
                await stats_reach(reg, "keepalive_round_trips", before.keepalive_round_trips + 2)
                assert reg.statistics().losses == 0 and reg.lease_id == lease

                # Nor can a frozen etcd hold up leaving the block for longer than revoke_timeout.
                reg.revoke_timeout = 0.5
                etcd.stop()
                left = time.monotonic()
            assert time.monotonic() - left < reg.revoke_timeout + LOOP_SLACK
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


async def test_streams_come_back_with_a_new_token_after_etcd_forgets_the_old_one() -> None:
    """Simple tokens live in etcd's memory: a restart invalidates every one of them and breaks
    every stream. The keep-alive and the key's watch must come back on the restarted etcd, the
    watch with a renewed token (etcd checks a watch's token when it is created), so that the key
    is still defended; the lease must survive (etcd extends leases when it restarts)."""
    password = "keep-alive-pw"
    async with EtcdServer() as etcd:
        await anyio.to_thread.run_sync(lambda: etcd.enable_auth(password=password))
        with pytest.warns(UserWarning, match="plaintext"):
            client = await aiodiscovery.connect(etcd.url, username="root", password=password)
        try:
            async with Registrar(client, "svc/token", "10.0.4.1:1", ttl=10) as reg:
                await stats_reach(reg, "keepalive_round_trips", 1)
                lease, before = reg.lease_id, reg.statistics()
                token = client.metadata
                await etcd.restart()
                # A refresh on a new stream, then the key's watch on a new stream too.
                await stats_reach(reg, "keepalive_streams", before.keepalive_streams + 1)
                await stats_reach(reg, "keepalive_round_trips", before.keepalive_round_trips + 1)
                await stats_reach(reg, "watch_streams", before.watch_streams + 1)
                assert client.metadata != token
                assert client.statistics().authentications >= 2
                # The watch on the restarted etcd works: a delete is seen, the key comes back.
                await run_etcdctl(etcd, "del", reg.key)
                found = await eventually(
                    lambda: read_key(client, reg.key), lambda found: found is not None
                )
                assert found is not None and found[1] == lease
                stats = reg.statistics()
                assert stats.losses == 1 and "deleted" in (stats.last_loss_reason or ""), stats
                assert reg.lease_id == lease
            assert await read_key(client, reg.key) is None
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
