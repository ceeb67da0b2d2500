"""A real multi-member etcd cluster on loopback ports: :class:`EtcdCluster`."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio

from .._backoff import Backoff
from ._certificates import TLSFiles
from ._daemon import DEFAULT_START_TIMEOUT
from ._etcdctl import enable_auth, run_etcdctl
from ._lifecycle import Lifecycle
from ._peers import local_ports
from ._ports import PortInUseError, free_port
from ._process import EtcdBinary
from ._server import EtcdServer
from ._tcp_proxy import TcpProxy

__all__ = ["EtcdCluster"]

_STATUS = ("endpoint", "status", "--write-out=json")
_RECONFIGURE_TIMEOUT = 30.0


class EtcdCluster(Lifecycle):
    """A real multi-member etcd cluster on loopback ports (three members by default).

    ``members`` are :class:`EtcdServer` objects, each able to be killed, stopped and restarted.
    ``urls`` is the comma-separated client URL list to hand to :func:`aiodiscovery.connect`.
    ``tls``, ``client_cert_auth`` and ``extra_args`` apply to every member; with TLS all members
    share one set of :class:`TLSFiles`, so one client configuration (:meth:`tls_kwargs`) fits all.

    ``peer_proxies=True`` (``async with`` only) puts a :class:`TcpProxy` in front of every
    member's peer port (``peer_proxies[i]`` for ``members[i]``): :meth:`isolate` cuts a member
    off from its peers while clients still reach it, and a proxy's ``latency`` slows the raft
    traffic to its member. :meth:`replace` swaps a member for a fresh one (etcd's member remove
    and add, a new data directory, the same ports). The proxies run on the owner's event loop:
    a blocking call there (``etcdctl()``, ``leader()``, ``enable_auth()`` outside a thread)
    holds up the raft traffic, so use the async forms.

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
        peer_proxies: bool = False,
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
        self.peer_proxies: list[TcpProxy] = []
        if peer_proxies:
            self.peer_proxies = [TcpProxy(m.peer_port, port=free_port()) for m in self.members]
            for member, proxy in zip(self.members, self.peer_proxies, strict=True):
                member.advertised_peer_port = proxy.port
        self._proxies = contextlib.AsyncExitStack()
        self._replacements = 0
        self._share_initial_cluster()

    def _share_initial_cluster(self) -> None:
        initial = ",".join(f"{m.name}={m.advertised_peer_url}" for m in self.members)
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

    def isolate(self, member: EtcdServer) -> None:
        """Cut ``member`` off from its peers, both ways, until :meth:`rejoin`; its clients still
        reach it (needs ``peer_proxies=True``)."""
        i = self._proxied(member)
        self.peer_proxies[i].cut()
        for j, proxy in enumerate(self.peer_proxies):
            if j != i:
                # Connections the member dialed: their source port is one of its sockets'.
                proxy.cut_from(lambda peer: peer[1] in local_ports(member.pid))

    def rejoin(self, member: EtcdServer) -> None:
        """Undo :meth:`isolate`."""
        self._proxied(member)
        for proxy in self.peer_proxies:
            proxy.heal()

    def _proxied(self, member: EtcdServer) -> int:
        if not self.peer_proxies:
            raise RuntimeError("peer faults need EtcdCluster(peer_proxies=True)")
        return self.members.index(member)

    async def replace(self, member: EtcdServer) -> EtcdServer:
        """Remove ``member`` from the cluster and add a fresh one in its place (etcd's member
        remove, then member add; a new name and data directory, the same ports and proxy), as an
        operator replaces a failed machine (a leader too: the others elect a new one). Returns
        the new member, now in :attr:`members`."""
        i = self.members.index(member)
        rest = [m for m in self.members if m is not member and m.running]
        others = ",".join(m.url for m in rest)
        first = rest[0]
        with anyio.fail_after(_RECONFIGURE_TIMEOUT):
            ids = {m.get("name"): m["ID"] for m in await self._member_list(first, others)}
            old_id = ids[member.name]
            await _until_done(
                lambda: first.etcdctl_async("member", "remove", f"{old_id:x}", endpoints=others)
            )
            await member._kill_async()
            self._replacements += 1
            name = f"{member.name.split('-')[0]}-r{self._replacements}"
            fresh = EtcdServer(
                name=name,
                data_dir=self._base / name,
                client_port=member.client_port,
                peer_port=member.peer_port,
                fast=member.fast,
                start_timeout=member.start_timeout,
                client_cert_auth=member.client_cert_auth,
                tls_files=member.tls_files,
                extra_args=member.extra_args,
                etcd_binary=member.binary,
            )
            fresh.advertised_peer_port = member.advertised_peer_port
            fresh._credentials = member._credentials
            url = fresh.advertised_peer_url
            # A retried add that had gone through is refused as a duplicate: it is done.
            add = ("member", "add", name, f"--peer-urls={url}")
            await _until_done(
                lambda: first.etcdctl_async(*add, endpoints=others), done_if="already exists"
            )
            listed = await self._member_list(first, others)
        fresh.initial_cluster = ",".join(
            f"{m.get('name') or name}={m['peerURLs'][0]}" for m in listed
        )
        fresh.initial_cluster_state = "existing"
        self.members[i] = fresh
        await fresh.__aenter__()
        return fresh

    @staticmethod
    async def _member_list(member: EtcdServer, endpoints: str) -> list[dict[str, Any]]:
        out = await member.etcdctl_async("member", "list", "-w", "json", endpoints=endpoints)
        members: list[dict[str, Any]] = json.loads(out)["members"]
        return members

    async def __aenter__(self) -> Self:
        for proxy in self.peer_proxies:
            await self._proxies.enter_async_context(proxy)
        try:
            return await super().__aenter__()
        except BaseException:
            # Not shielded: the proxies' task groups must leave the cancel scopes they entered.
            await self._proxies.aclose()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            await self._proxies.aclose()

    def __enter__(self) -> Self:
        if self.peer_proxies:
            raise RuntimeError("EtcdCluster(peer_proxies=True) runs with 'async with' only")
        return super().__enter__()

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
        for member, proxy in zip(self.members, self.peer_proxies, strict=False):
            proxy.target_port = member.peer_port
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


# etcd's answers while a reconfiguration cannot go through yet: the others have not been
# connected for long enough, an election is under way, a proposal went to a leader that left.
_TRANSIENT = ("unhealthy cluster", "request timed out", "deadline exceeded", "leader changed")


async def _until_done(etcdctl: Callable[[], Awaitable[str]], done_if: str | None = None) -> None:
    """Run ``etcdctl`` again (with backoff) until it succeeds; a failure other than a transient
    one is raised, one that says ``done_if`` counts as success. The caller bounds the time."""
    backoff = Backoff(initial=0.2, cap=2.0)
    while True:
        try:
            await etcdctl()
        except RuntimeError as exc:
            if done_if is not None and done_if in str(exc):
                return
            if not any(reason in str(exc) for reason in _TRANSIENT):
                raise
        else:
            return
        await backoff.sleep()
