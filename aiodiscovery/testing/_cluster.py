"""A real multi-member etcd cluster on loopback ports: :class:`EtcdCluster`."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._certificates import TLSFiles
from ._daemon import DEFAULT_START_TIMEOUT
from ._etcdctl import enable_auth, run_etcdctl
from ._lifecycle import Lifecycle
from ._ports import PortInUseError
from ._process import EtcdBinary
from ._server import EtcdServer

__all__ = ["EtcdCluster"]

_STATUS = ("endpoint", "status", "--write-out=json")


class EtcdCluster(Lifecycle):
    """A real multi-member etcd cluster on loopback ports (three members by default).

    ``members`` are :class:`EtcdServer` objects, each able to be killed, stopped and restarted.
    ``urls`` is the comma-separated client URL list to hand to :func:`aiodiscovery.connect`.
    ``tls``, ``client_cert_auth`` and ``extra_args`` apply to every member; with TLS all members
    share one set of :class:`TLSFiles`, so one client configuration (:meth:`tls_kwargs`) fits all.
    ``etcd_binary`` is the etcd every member runs (see :class:`EtcdServer`).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        fast: bool = True,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        tls: bool = False,
        client_cert_auth: bool = False,
        extra_args: Sequence[str] = (),
        etcd_binary: EtcdBinary | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self._base = Path(tempfile.mkdtemp(prefix="aiodiscovery-cluster-"))
        tls_files = TLSFiles(self._base / "tls") if tls or client_cert_auth else None
        self.members = [
            EtcdServer(
                name=f"m{i}",
                data_dir=self._base / f"m{i}",
                fast=fast,
                start_timeout=start_timeout,
                client_cert_auth=client_cert_auth,
                tls_files=tls_files,
                extra_args=extra_args,
                etcd_binary=etcd_binary,
            )
            for i in range(size)
        ]
        self._share_initial_cluster()

    def _share_initial_cluster(self) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def version(self) -> tuple[int, int, int]:
        """The version of the etcd the members run, as ``(3, 5, 1)``."""
        return self.members[0].version

    @property
    def urls(self) -> str:
        """Every member's client URL, comma-separated."""
        return ",".join(m.url for m in self.members)

    def tls_kwargs(self) -> dict[str, Any]:
        """``connect()`` keyword arguments for TLS (see :meth:`EtcdServer.tls_kwargs`)."""
        return self.members[0].tls_kwargs()

    def etcdctl(self, *args: str, check: bool = True) -> str:
        """Run ``etcdctl`` against the whole cluster and return its standard output."""
        first = self.members[0]
        return first.etcdctl(*args, check=check, endpoints=self.urls)

    async def etcdctl_async(self, *args: str, check: bool = True) -> str:
        """:meth:`etcdctl` without blocking the event loop."""
        first = self.members[0]
        return await first.etcdctl_async(*args, check=check, endpoints=self.urls)

    def enable_auth(self, user: str = "root", password: str = "root") -> None:
        """Turn authentication on for the cluster (see :meth:`EtcdServer.enable_auth`)."""

        def etcdctl(*args: str, stdin: str | None = None) -> str:
            first = self.members[0]
            return run_etcdctl(
                self.urls, *args, flags=first.ctl_flags(), stdin=stdin, etcd=first.binary
            )

        credentials = enable_auth(etcdctl, user, password)
        for member in self.members:
            member._credentials = credentials

    def _leader_in(self, statuses: list[dict[str, Any]]) -> EtcdServer | None:
        for status in statuses:
            # A zero leader (an election under way) is left out of etcd's JSON.
            leader = status["Status"].get("leader")
            if leader and leader == status["Status"]["header"]["member_id"]:
                return next(m for m in self.members if m.url == status["Endpoint"])
        return None

    def _running_urls(self) -> str:
        return ",".join(m.url for m in self.members if m.running)

    def leader(self) -> EtcdServer | None:
        """The member that is raft leader now, or ``None`` during an election."""
        out = self.members[0].etcdctl(*_STATUS, check=False, endpoints=self._running_urls())
        return self._leader_in(json.loads(out or "[]"))

    async def leader_async(self) -> EtcdServer | None:
        """:meth:`leader` without blocking the event loop."""
        first, endpoints = self.members[0], self._running_urls()
        out = await first.etcdctl_async(*_STATUS, check=False, endpoints=endpoints)
        return self._leader_in(json.loads(out or "[]"))

    def _prepare(self) -> None:
        for member in self.members:
            member._prepare()

    def _launch(self) -> None:
        # Members must start together: none is healthy before a quorum has elected a leader.
        for member in self.members:
            member._launch()

    def _wait_ready_sync(self) -> None:
        for member in self.members:
            member.wait_ready_sync()

    async def _wait_ready(self) -> None:
        for member in self.members:
            await member.wait_ready()

    def _halt(self) -> None:
        for member in self.members:
            member.kill()

    async def _halt_async(self) -> None:
        for member in self.members:
            await member._kill_async()

    def _renew_ports(self, error: BaseException) -> bool:
        if not isinstance(error, PortInUseError):
            return False
        for member in self.members:
            member._pick_new_ports()
        self._share_initial_cluster()
        return True

    def _wipe_failed_start(self) -> None:
        for member in self.members:
            member._wipe_failed_start()

    def _remove_files(self) -> None:
        shutil.rmtree(self._base, ignore_errors=True)

    def __repr__(self) -> str:
        running = sum(m.running for m in self.members)
        return f"<EtcdCluster {running}/{len(self.members)} running {self.urls}>"
