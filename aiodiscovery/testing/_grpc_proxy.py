"""etcd's own gRPC proxy (``etcd grpc-proxy start``) in front of a server or a cluster."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._certificates import TLSFiles
from ._cluster import EtcdCluster
from ._daemon import DEFAULT_START_TIMEOUT, EtcdProcess
from ._ports import PortInUseError, free_port
from ._server import EtcdServer

__all__ = ["EtcdGrpcProxy"]


class EtcdGrpcProxy(EtcdProcess):
    """etcd's gRPC proxy on a free loopback port, forwarding to ``upstream``.

    The proxy (the upstream's etcd binary) coalesces watches and keep-alives of many clients
    into few streams to etcd; clients dial :attr:`url` as they would dial etcd::

        async with EtcdServer() as etcd, EtcdGrpcProxy(etcd) as proxy:
            client = await aiodiscovery.connect(proxy.url)

    ``upstream`` is an :class:`EtcdServer` or an :class:`EtcdCluster` (the proxy then fails over
    between its members). With a TLS upstream the proxy talks TLS to it and serves TLS itself with
    the same test PKI, demanding client certificates when the upstream does, so
    :meth:`tls_kwargs` is the upstream's. Like :class:`EtcdServer` it can be killed, stopped,
    resumed and restarted on the same port, and works as ``async with`` and as ``with``.
    ``extra_args`` go to ``etcd grpc-proxy start`` as they are.
    """

    def __init__(
        self,
        upstream: EtcdServer | EtcdCluster,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self._members = upstream.members if isinstance(upstream, EtcdCluster) else [upstream]
        self._chose_port = port is None
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self._base = Path(tempfile.mkdtemp(prefix="aiodiscovery-grpc-proxy-"))
        super().__init__(start_timeout=start_timeout, log_path=self._base / "grpc-proxy.log")

    @property
    def _first(self) -> EtcdServer:
        return self._members[0]

    @property
    def description(self) -> str:
        """``etcd gRPC proxy on port <port>``, for messages."""
        return f"etcd gRPC proxy on port {self.port}"

    @property
    def url(self) -> str:
        """What clients dial: ``http://127.0.0.1:<port>`` (``https://`` with a TLS upstream)."""
        scheme = "https" if self._first.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def tls_kwargs(self) -> dict[str, Any]:
        """``connect()`` keyword arguments for the proxy: the upstream's (see
        :meth:`EtcdServer.tls_kwargs`)."""
        return self._first.tls_kwargs()

    def etcdctl(self, *args: str, check: bool = True) -> str:
        """Run ``etcdctl`` through the proxy (with the upstream's TLS flags and credentials)."""
        return self._first.etcdctl(*args, check=check, endpoints=self.url)

    async def etcdctl_async(self, *args: str, check: bool = True) -> str:
        """:meth:`etcdctl` without blocking the event loop."""
        return await self._first.etcdctl_async(*args, check=check, endpoints=self.url)

    def _listen_ports(self) -> list[int]:
        return [self.port]

    def _health_tls(self) -> tuple[TLSFiles, bool] | None:
        first = self._first
        return (first._tls(), first.client_cert_auth) if first.tls else None

    def _command(self) -> list[str]:
        address = f"127.0.0.1:{self.port}"
        first = self._first
        command = [
            str(first.binary),
            "grpc-proxy",
            "start",
            f"--endpoints={','.join(m.url for m in self._members)}",
            f"--listen-addr={address}",
            # The proxy dials its own advertised address (default 127.0.0.1:23790, maybe someone
            # else's): point it at itself.
            f"--advertise-client-url={address}",
            f"--data-dir={self._base / 'data'}",
        ]
        if first.tls:
            files = first._tls()
            command += [
                f"--cacert={files.ca_path}",
                f"--cert-file={files.server_cert_path}",
                f"--key-file={files.server_key_path}",
            ]
            if first.client_cert_auth:
                command += [
                    f"--cert={files.proxy_cert_path}",
                    f"--key={files.proxy_key_path}",
                    f"--trusted-ca-file={files.ca_path}",
                ]
        return command + self.extra_args

    def _renew_ports(self, error: BaseException) -> bool:
        if isinstance(error, PortInUseError) and self._chose_port:
            self.port = free_port()
            return True
        return False

    def _wipe_failed_start(self) -> None:
        """Nothing to wipe: the proxy keeps no state."""

    def _remove_files(self) -> None:
        shutil.rmtree(self._base, ignore_errors=True)

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<EtcdGrpcProxy {self.url} -> {self.upstream!r} {state}>"
