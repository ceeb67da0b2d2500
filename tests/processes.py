"""Child processes for command-line tests: every wait bounded, output read line by line."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without settings that would change what the CLI dials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aiodiscovery", *args]


def run(
    command: Sequence[str],
    *,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    stdin: int | IO[str] | None = subprocess.DEVNULL,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to completion (failing the test if it outlives ``timeout``)."""
    return subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env() if env is None else env,
        stdin=stdin,
        cwd=ROOT,
        check=False,
    )


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run(cli_command(*args), timeout=timeout)


class Process:
    """A running child whose stdout is read line by line with bounded waits.

    Leaving the ``with`` block kills the child if it still runs. ``stderr`` is collected too.
    """

    def __init__(self, command: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.popen = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env() if env is None else env,
            cwd=ROOT,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self._lines.put(line.rstrip("\n"))
            else:
                self.stderr_lines.append(line.rstrip("\n"))
        if is_stdout:
            self._lines.put(None)

    def _describe(self) -> str:
        return (
            f"{' '.join(self.command)}\n--- stdout:\n"
            + "\n".join(self.stdout_lines)
            + "\n--- stderr:\n"
            + "\n".join(self.stderr_lines)
        )

    def readline(self, timeout: float = 15) -> str:
        """The next stdout line; fails if none comes within ``timeout`` or output ends."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output line within {timeout} s from {self._describe()}"
            ) from None
        if line is None:
            self._lines.put(None)
            raise AssertionError(f"output ended early from {self._describe()}")
        self.stdout_lines.append(line)
        return line

    def expect(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """Read lines until one matches the regular expression ``pattern`` (bounded overall)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} from {self._describe()}")
            match = regex.search(self.readline(remaining))
            if match:
                return match

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 15) -> int:
        """Wait for the exit code; kill the child and fail if it takes longer than ``timeout``."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(f"still running after {timeout} s: {self._describe()}") from None
        for thread in self._threads:
            thread.join(5)
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stdout_lines.append(line)
        return code

    @property
    def stdout(self) -> str:
        return "\n".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(5)


def wait_for(probe: Callable[[], T], predicate: Callable[[T], bool], timeout: float = 15) -> T:
    """Re-run ``probe`` until ``predicate`` holds on its result; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = probe()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last value: {value!r}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
