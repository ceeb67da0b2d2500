"""The aiodiscovery.testing helpers users rely on: real processes, faults, no leftovers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, ClassVar

import anyio
import pytest

import aiodiscovery
from aiodiscovery.testing import (
    EtcdCluster,
    EtcdGrpcProxy,
    EtcdServer,
    PortInUseError,
    TLSFiles,
    run_etcdctl,
)

from .helpers import eventually
from .processes import Process, wait_for

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
        assert etcd.etcdctl("put", "k", "v").strip() == "OK"
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


PASSWORD = "kit-Pa55word-7f3a"  # distinctive, so a leak anywhere is easy to find


class RecordingPopen(subprocess.Popen):  # type: ignore[type-arg]
    """Every process started in the test, through subprocess.run, asyncio or directly."""

    started: ClassVar[list[tuple[list[str], dict[str, str]]]] = []

    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        env = kwargs.get("env")
        RecordingPopen.started.append(([os.fsdecode(a) for a in args], dict(env or os.environ)))
        super().__init__(args, *rest, **kwargs)


async def test_no_password_on_any_command_line_the_kit_builds(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    RecordingPopen.started.clear()
    async with EtcdServer(client_cert_auth=True) as etcd:
        etcd.enable_auth("alice", PASSWORD)
        assert etcd.auth_user == "alice"
        etcd.etcdctl("put", f"{service}/k", "v")
        assert (await etcd.etcdctl_async("get", f"{service}/k", "--print-value-only")) == "v\n"
        async with EtcdGrpcProxy(etcd) as proxy:
            proxy.etcdctl("put", f"{service}/k", "through the proxy")
        pid = etcd.pid
        assert pid is not None
        cmdline = await anyio.Path(f"/proc/{pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline
        # Authentication is really on: without credentials etcd refuses.
        with pytest.raises(RuntimeError, match="permission denied"):
            run_etcdctl(etcd.url, "get", "x", flags=etcd.ctl_flags())
        assert etcd.ctl_env()["ETCDCTL_PASSWORD"] == PASSWORD
    argvs = [argv for argv, _ in RecordingPopen.started]
    assert any("grpc-proxy" in argv for argv in argvs)
    assert not [argv for argv in argvs if any(PASSWORD in arg for arg in argv)]
    with_password = [env for _, env in RecordingPopen.started if PASSWORD in env.values()]
    assert with_password, "the password reached etcdctl some other way"
    assert all(env["ETCDCTL_PASSWORD"] == PASSWORD for env in with_password)


async def test_passwords_etcdctl_cannot_read_are_refused_before_anything_changes() -> None:
    async with EtcdServer() as etcd:
        for bad in ("", "two words", "tab\there"):
            with pytest.raises(ValueError, match="one word"):
                etcd.enable_auth(password=bad)
        assert etcd.auth_user is None
        # No user was added, and auth is off: etcdctl without credentials may list users.
        # (Not `etcdctl auth status`: etcd 3.4's etcdctl has no such command.)
        assert etcd.etcdctl("user", "list").strip() == ""


async def test_the_callers_etcdctl_settings_do_not_redirect_the_kit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """etcdctl refuses an ETCDCTL_ENDPOINTS that a flag shadows, and would use a stray
    ETCDCTL_USER: the kit's etcdctl talks to its own member with its own credentials."""
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "http://127.0.0.1:1")
    monkeypatch.setenv("ETCDCTL_USER", "mallory:guess")
    async with EtcdServer() as etcd:
        etcd.etcdctl("put", "k", "v")
        assert etcd.etcdctl("get", "k", "--print-value-only") == "v\n"


OWNER_SCRIPTS = {
    "with": """
import time
from aiodiscovery.testing import EtcdGrpcProxy, EtcdServer
with EtcdServer() as etcd, EtcdGrpcProxy(etcd) as proxy:
    print("pids", etcd.pid, proxy.pid, flush=True)
    time.sleep(600)
""",
    "async with": """
import anyio
from aiodiscovery.testing import EtcdGrpcProxy, EtcdServer
async def main():
    async with EtcdServer() as etcd, EtcdGrpcProxy(etcd) as proxy:
        print("pids", etcd.pid, proxy.pid, flush=True)
        await anyio.sleep_forever()
anyio.run(main)
""",
}


def gone(pid: int) -> bool:
    """No such process, or only its exit status left (a zombie nobody has reaped yet)."""
    try:
        return process_state(pid) in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("form", OWNER_SCRIPTS)
def test_no_etcd_outlives_an_interpreter_killed_with_sigkill(form: str) -> None:
    """No atexit hook runs on SIGKILL: the kernel must take the children down with it."""
    with Process([sys.executable, "-c", OWNER_SCRIPTS[form]]) as owner:
        pids = [int(pid) for pid in owner.expect(r"^pids (\d+) (\d+)$", timeout=30).groups()]
        assert not any(gone(pid) for pid in pids)
        owner.signal(signal.SIGKILL)
        assert owner.wait() == -signal.SIGKILL
    wait_for(lambda: [pid for pid in pids if not gone(pid)], lambda left: not left, timeout=15)
