"""Starting and stopping test processes: the one start-and-retry loop, for ``with`` and
``async with``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

import anyio

__all__ = ["Lifecycle"]

# A port picked free can be taken by another process before etcd binds it; picking again is
# safe for a first start on ports we chose.
_START_ATTEMPTS = 3


class Lifecycle(ABC):
    """Processes started on entry (retried on lost ports), killed and cleaned up on exit.

    Both forms run the same steps; the async form keeps blocking work off the event loop: files
    are prepared and removed in a worker thread, processes are reaped without blocking, and
    processes are spawned on the loop's own thread (they die with the thread that started them).
    """

    @abstractmethod
    def _prepare(self) -> None:
        """Blocking preparation before a start: directories, certificates."""

    @abstractmethod
    def _launch(self) -> None:
        """Spawn the processes without waiting for them to serve."""

    @abstractmethod
    def _wait_ready_sync(self) -> None:
        """Block until every process serves (bounded)."""

    @abstractmethod
    async def _wait_ready(self) -> None:
        """Wait until every process serves (bounded)."""

    @abstractmethod
    def _halt(self) -> None:
        """Kill every process and reap it; files stay."""

    @abstractmethod
    async def _halt_async(self) -> None:
        """:meth:`_halt` without blocking the event loop."""

    @abstractmethod
    def _renew_ports(self, error: BaseException) -> bool:
        """After a failed first start: pick new ports and return True if ``error`` says a port
        was lost and the ports are ours to change; else False."""

    @abstractmethod
    def _wipe_failed_start(self) -> None:
        """Blocking: remove what a failed start left that a start on new ports cannot reuse."""

    @abstractmethod
    def _remove_files(self) -> None:
        """Blocking: remove the temporary files this object owns."""

    def close(self) -> None:
        """Kill every process and remove the temporary files this object owns."""
        self._halt()
        self._remove_files()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop; runs to the end even if cancelled."""
        with anyio.CancelScope(shield=True):
            await self._halt_async()
            await anyio.to_thread.run_sync(self._remove_files)

    def _retry(self, attempt: int, error: BaseException) -> bool:
        return attempt < _START_ATTEMPTS and self._renew_ports(error)

    def __enter__(self) -> Self:
        attempt = 0
        while True:
            attempt += 1
            try:
                self._prepare()
                self._launch()
                self._wait_ready_sync()
            except BaseException as exc:
                self._halt()
                if not self._retry(attempt, exc):
                    self.close()
                    raise
                self._wipe_failed_start()
            else:
                return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        attempt = 0
        while True:
            attempt += 1
            try:
                await anyio.to_thread.run_sync(self._prepare)
                self._launch()
                await self._wait_ready()
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await self._halt_async()
                    retry = self._retry(attempt, exc)
                    if retry:
                        await anyio.to_thread.run_sync(self._wipe_failed_start)
                if not retry:
                    await self.aclose()
                    raise
            else:
                return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
