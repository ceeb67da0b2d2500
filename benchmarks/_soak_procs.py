"""The soak's child processes: starting them tied to the soak, hearing them, stopping them, and
checking afterwards that none is left and none printed a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from aiodiscovery.testing._peers import tcp_ports

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Between fork and exec: the kernel SIGKILLs the child when the soak's thread that started it
    # dies, so even a SIGKILLed soak leaves nothing behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ChildError(RuntimeError):
    """A child process did not do what the soak waited for."""


class Child:
    """A child process that tells its events as JSON lines on stdout.

    It runs in a session of its own (a Ctrl-C in the terminal reaches the soak only, which then
    stops it) and dies with the soak. Its stderr goes to ``stderr_path``. Start it from the event
    loop's thread, which lives as long as the soak.
    """

    def __init__(self, name: str, command: Sequence[str], stderr_path: Path) -> None:
        self.name = name
        self.stderr_path = stderr_path
        self.events: list[dict[str, Any]] = []
        self.launched = time.monotonic()
        # Set when a fault SIGKILLs it: its exit status then says nothing about its health.
        self.killed = False
        self._loop = asyncio.get_running_loop()
        self._changed: asyncio.Future[None] = self._loop.create_future()
        with stderr_path.open("ab") as stderr:
            self.popen = subprocess.Popen(
                list(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.popen.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.popen.stdout,), name=f"{name}-stdout", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    @property
    def running(self) -> bool:
        """Whether the child has not exited yet."""
        return self.popen.poll() is None

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                event = json.loads(raw)
            except ValueError:
                line = raw.decode(errors="replace")
                event = {"event": "noise", "t": time.monotonic(), "line": line}
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._add, event)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._add, {"event": "eof", "t": time.monotonic()})

    def _add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        changed, self._changed = self._changed, self._loop.create_future()
        changed.set_result(None)

    def seen(self, name: str) -> list[dict[str, Any]]:
        """Every event called ``name`` so far."""
        return [e for e in self.events if e["event"] == name]

    async def wait_event(self, name: str, timeout: float, *, after: int = 0) -> dict[str, Any]:
        """The first event called ``name`` among those from index ``after`` on; waits for it up
        to ``timeout`` seconds and fails if the child ends first."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event["event"] == name:
                    return event
                if event["event"] == "eof":
                    raise ChildError(f"{self.name} ended before {name!r}: {self.stderr_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"{self.name}: no {name!r} within {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)

    def stderr_tail(self, lines: int = 15) -> str:
        """The last lines of the child's stderr, for an error message."""
        try:
            text = self.stderr_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no stderr)"
        return "\n".join(text[-lines:])

    def signal(self, signum: int) -> float:
        """Send ``signum``; returns the time just before it, so that a call failing in the same
        instant is counted as after the fault, not before."""
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signum)
        return sent

    def kill(self) -> tuple[float, float]:
        """SIGKILL and reap it: the times just before the signal and once it is gone (its
        sockets closed)."""
        self.killed = True
        signalled = self.signal(signal.SIGKILL)
        self.popen.wait()
        return signalled, time.monotonic()

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or ``None`` if it still runs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return self.popen.returncode

    def close_stdin(self) -> None:
        """End of input: the child finishes when it reads it."""
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    async def stop(self, timeout: float) -> int:
        """End of input asks it to finish; SIGKILL if it is not gone within ``timeout``."""
        self.close_stdin()
        code = await self.wait_exit(timeout)
        if code is None:
            self.signal(signal.SIGKILL)
            code = self.popen.wait()
        self._reader.join(2)
        return code

    def destroy(self) -> None:
        """Kill its whole session at once (cleanup on any path; never raises)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.popen.wait(5)
        self.close_stdin()
        if self.popen.stdout is not None:
            with contextlib.suppress(OSError):
                self.popen.stdout.close()


def processes_matching(needles: Sequence[str]) -> list[dict[str, Any]]:
    """Live processes (not this one) whose command line contains any of ``needles``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        if any(needle in cmdline for needle in needles):
            found.append({"pid": int(entry.name), "cmdline": cmdline.strip()[:300]})
    return found


def connected_ports(pid: int) -> set[int]:
    """The remote ports of the process's established TCP connections (from /proc), e.g.
    which etcd member its client talks to: gRPC says nothing about that."""
    return tcp_ports(pid, remote=True)


def tracebacks_in(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Each Python traceback (or fatal error of the interpreter) in the given files: the file,
    and the exception."""
    found = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        for i, line in enumerate(lines):
            if line.startswith("Fatal Python error"):
                found.append({"file": path.name, "line": i + 1, "exception": line[:300]})
            elif "Traceback (most recent call last)" in line:
                # The exception line is the first after the indented frames.
                j = i + 1
                while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                    j += 1
                exception = lines[j] if j < len(lines) else ""
                found.append({"file": path.name, "line": i + 1, "exception": exception[:300]})
    return found
