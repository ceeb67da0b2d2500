"""A demo server process seen from the demo: start it, hear what it says, tell it what to do,
make sure it is gone."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from ._protocol import CHILD_EXIT_TIMEOUT, CHILD_MODULE

__all__ = ["Server", "spawn"]

_SPAWN_TIMEOUT = 20.0

logger = logging.getLogger("aiodiscovery")


class Server:
    """One greeter server child process and the lines it tells us."""

    def __init__(self, name: str, process: Process) -> None:
        self.name = name
        self.process = process
        assert process.stdout is not None and process.stdin is not None
        self._lines = BufferedByteReceiveStream(process.stdout)
        self.address = ""
        self.key = ""

    async def expect(self, word: str, timeout: float) -> list[str]:
        """Wait for the child's next line; it must start with ``word``."""
        try:
            with anyio.fail_after(timeout):
                line = (await self._lines.receive_until(b"\n", 65536)).decode()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            code = await self.wait_exit(CHILD_EXIT_TIMEOUT)
            raise RuntimeError(
                f"demo server {self.name} exited (code {code}) instead of saying {word}"
            ) from None
        except TimeoutError:
            raise RuntimeError(
                f"demo server {self.name} did not say {word} in {timeout:g} s"
            ) from None
        parts = line.split()
        if parts and parts[0] == "ERROR" and word != "ERROR":
            raise RuntimeError(f"demo server {self.name} failed: {line.split(None, 1)[1].strip()}")
        if not parts or parts[0] != word:
            raise RuntimeError(f"demo server {self.name} said {line!r}, expected {word}")
        return parts[1:]

    async def send(self, line: str) -> None:
        """Send the child one line."""
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send(line.encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # Not our stdout's BrokenPipeError: the child is gone, a failed step of the demo.
            code = await self.wait_exit(CHILD_EXIT_TIMEOUT)
            raise RuntimeError(
                f"demo server {self.name} exited (code {code}) while we were talking to it"
            ) from None

    @property
    def running(self) -> bool:
        """Whether the process still runs."""
        return self.process.returncode is None

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the child to exit; kill it if it takes longer than ``timeout``."""
        with anyio.move_on_after(timeout):
            return await self.process.wait()
        # It may have exited just now: then there is nothing to kill.
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        return await self.process.wait()

    async def close(self) -> None:
        """Stop the child: end of input asks it to deregister and stop, SIGKILL if it dawdles.

        Never raises: it runs in cleanup, next to other servers' cleanup.
        """
        with anyio.CancelScope(shield=True):
            try:
                if self.running:
                    assert self.process.stdin is not None
                    with contextlib.suppress(Exception):
                        await self.process.stdin.aclose()
                    await self.wait_exit(CHILD_EXIT_TIMEOUT)
                await self.process.aclose()
            except Exception as exc:
                logger.warning("demo server %s: could not stop it cleanly: %s", self.name, exc)


async def spawn(name: str, config: dict[str, Any]) -> Server:
    """Start server ``name``, hand it ``config`` and wait until it has registered."""
    # The settings, password included, go through the child's stdin (see _protocol), never its
    # command line; nor does it inherit an ETCDCTL_PASSWORD it has no use for.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    process = await anyio.open_process(
        [sys.executable, "-m", CHILD_MODULE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        env=environment,
        # Out of the terminal's process group: Ctrl-C reaches the demo only, which then stops
        # the servers in order.
        start_new_session=True,
    )
    server = Server(name, process)
    try:
        await server.send(json.dumps({**config, "name": name}))
        server.address, server.key = await server.expect("READY", _SPAWN_TIMEOUT)
    except BaseException:
        with anyio.CancelScope(shield=True):
            # A child that failed has exited already: kill() would raise and hide why.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await server.close()
        raise
    return server
