"""The aiodiscovery.testing helpers users rely on: real processes, faults, no leftovers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import anyio
import pytest

import aiodiscovery
from aiodiscovery.testing import EtcdCluster, EtcdServer, PortInUseError, TLSFiles

from .helpers import eventually

pytestmark = pytest.mark.anyio


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


async def test_server_kill_restart_keeps_data_and_ports() -> None:
    async with EtcdServer() as etcd:
        port, data_dir = etcd.client_port, etcd.data_dir
        etcd.etcdctl("put", "k", "v1")
        first_pid = etcd.pid
        assert first_pid is not None
        etcd.kill()
        assert not etcd.running and not alive(first_pid)
        await etcd.restart()
        assert etcd.client_port == port and etcd.data_dir == data_dir
        assert etcd.etcdctl("get", "k", "--print-value-only").strip() == "v1"
    assert not data_dir.exists()


async def test_stop_and_resume() -> None:
    async with EtcdServer() as etcd:
        pid = etcd.pid
        assert pid is not None
        etcd.stop()
        assert process_state(pid) == "T"
        with pytest.raises(RuntimeError, match="deadline exceeded"):
            etcd.etcdctl("put", "k", "v")
        etcd.resume()
        assert process_state(pid) != "T"
        etcd.etcdctl("put", "k", "v")


async def test_no_process_left_when_the_block_fails() -> None:
    server = EtcdServer()
    with pytest.raises(RuntimeError, match="boom"):
        async with server:
            pid = server.pid
            assert pid is not None and alive(pid)
            raise RuntimeError("boom")
    assert not alive(pid)


def test_sync_form_and_port_clash_is_explained() -> None:
    with EtcdServer() as etcd:
        assert "is healthy" in etcd.etcdctl("endpoint", "health")
        pid = etcd.pid
        assert pid is not None and alive(pid)
        clash = EtcdServer(client_port=etcd.client_port)
        with pytest.raises(RuntimeError, match=f"port {etcd.client_port} is already in use"):
            clash.__enter__()
        assert not clash.running
    assert not alive(pid)


async def test_start_failure_shows_etcd_log() -> None:
    with pytest.raises(RuntimeError, match="exited") as info:
        async with EtcdServer(extra_args=["--no-such-flag"]):
            pass
    assert "no-such-flag" in str(info.value)


async def test_cluster_of_three_serves_through_member_loss() -> None:
    async with EtcdCluster(3) as cluster:
        pids = [m.pid for m in cluster.members]
        status = cluster.etcdctl("endpoint", "status")
        assert len(status.strip().splitlines()) == 3
        follower = next(m for m in cluster.members if m is not cluster.leader())
        follower.kill()
        cluster.etcdctl("put", "k", "v")
        await follower.restart()
        assert follower.etcdctl("get", "k", "--print-value-only").strip() == "v"
        old_leader = cluster.leader()
        assert old_leader is not None
        old_leader.kill()

        async def leader() -> EtcdServer | None:
            return await anyio.to_thread.run_sync(cluster.leader)

        new_leader = await eventually(leader, lambda m: m is not None)
        assert new_leader is not old_leader
        client = await aiodiscovery.connect(cluster.urls)
        await client.close()
    assert not any(p is not None and alive(p) for p in pids)


async def test_signal_on_a_dead_member_is_an_error() -> None:
    async with EtcdServer() as etcd:
        etcd.kill()
        with pytest.raises(RuntimeError, match="not running"):
            etcd.stop()


async def test_ports_taken_before_etcd_binds_them_are_chosen_again() -> None:
    server = EtcdServer()
    taken = server.client_port
    with socket.socket() as squatter:
        # Another process grabbing the port between free_port() and etcd's bind.
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        async with server:
            assert server.client_port != taken
            server.etcdctl("put", "k", "v")


async def test_a_cluster_whose_peer_port_was_taken_starts_on_new_ports() -> None:
    cluster = EtcdCluster(3)
    taken = cluster.members[1].peer_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        async with cluster:
            assert taken not in {m.peer_port for m in cluster.members}
            cluster.etcdctl("put", "k", "v")
            assert len(cluster.etcdctl("member", "list").strip().splitlines()) == 3


async def test_a_given_port_in_use_is_not_silently_replaced() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} is already in use"):
            async with EtcdServer(client_port=port):
                pytest.fail("must not start")


async def test_async_forms_keep_blocking_work_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files, reaping and etcdctl run in worker threads or as async processes: a blocking call
    on the loop's thread would stall every other task (a registrar's keep-alive, a watch)."""
    loop_thread = threading.get_ident()
    on_loop: list[str] = []

    def spy(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def recorded(*args: object, **kwargs: object) -> object:
            if threading.get_ident() == loop_thread:
                on_loop.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)

    spy(shutil, "rmtree")
    spy(subprocess, "run")
    spy(subprocess.Popen, "wait")
    spy(TLSFiles, "generate")
    spy(time, "sleep")
    async with EtcdServer(tls=True) as etcd:
        await etcd.etcdctl_async("put", "k", "v")
        await etcd.restart()
        assert (await etcd.etcdctl_async("get", "k", "--print-value-only")).strip() == "v"
    async with EtcdCluster(1) as cluster:
        assert await cluster.leader_async() is cluster.members[0]
    with pytest.raises(RuntimeError, match="exited"):
        async with EtcdServer(extra_args=["--no-such-flag"]):
            pass
    assert on_loop == []
