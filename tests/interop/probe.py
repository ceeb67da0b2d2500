"""Talking to naming_probe (the Go side): batches through one process, or a live child."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

# Go before 1.22 (Debian's 1.19 here) writes U+0008 and U+000C as \u0008 and \u000c; Go 1.22+,
# which current etcd releases are built with and aiodiscovery targets, writes \b and \f. Escapes
# are matched left to right, so an escaped backslash followed by "u0008" is left alone.
_ESCAPE = re.compile(rb"\\(u0008|u000c|.)")
_GO_1_22 = {b"u0008": b"\\b", b"u000c": b"\\f"}


def as_go_1_22(data: bytes) -> bytes:
    """``data`` as Go 1.22+ would have written it (the only change: the two short escapes)."""
    return _ESCAPE.sub(lambda m: _GO_1_22.get(m.group(1), m.group(0)), data)


def run_batch(probe: Path, command: str, inputs: Iterable[bytes]) -> list[str]:
    """Send every input (base64, one per line) through one ``probe command``; one line back each."""
    payload = b"".join(base64.b64encode(item) + b"\n" for item in inputs)
    result = subprocess.run(
        [str(probe), command], input=payload, capture_output=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"naming_probe {command} failed: {result.stderr.decode()}")
    return result.stdout.decode().splitlines()


class GoChild:
    """A running ``naming_probe`` subcommand spoken to line by line, without blocking the loop.

    The event loop must stay free while Go works: the Go side may be calling a gRPC server that
    runs on this very loop.
    """

    def __init__(self, process: anyio.abc.Process, command: list[str]) -> None:
        self.process = process
        self.command = command
        assert process.stdout is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)

    @classmethod
    async def start(cls, probe: Path, *args: str) -> GoChild:
        command = [str(probe), *args]
        process = await anyio.open_process(command, stderr=subprocess.PIPE)
        return cls(process, command)

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode() + b"\n")

    async def readline(self, timeout: float = 20) -> str:
        try:
            with anyio.fail_after(timeout):
                return (await self._stdout.receive_until(b"\n", 1 << 24)).decode()
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead):
            raise AssertionError(
                f"no line from {' '.join(self.command)} within {timeout} s: {await self._stderr()}"
            ) from None

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request of the manager protocol; fails the test on a Go-side error."""
        await self.send(json.dumps(request))
        reply: dict[str, Any] = json.loads(await self.readline())
        if reply.get("err"):
            raise AssertionError(f"Go's Manager failed {request}: {reply['err']}")
        return reply

    async def _stderr(self) -> str:
        if self.process.returncode is None or self.process.stderr is None:
            return "(still running)"
        with anyio.move_on_after(2):
            return (await self.process.stderr.receive(1 << 16)).decode(errors="replace")
        return ""

    def kill(self) -> None:
        """SIGKILL: the Go process gets no chance to clean up (its lease must expire)."""
        self.process.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        """Close stdin (a clean exit for serve/client/manager), kill it if it lingers."""
        with anyio.CancelScope(shield=True):
            if self.process.stdin is not None:
                await self.process.stdin.aclose()
            with anyio.move_on_after(10):
                await self.process.wait()
            if self.process.returncode is None:
                self.kill()
                await self.process.wait()
            await self.process.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
