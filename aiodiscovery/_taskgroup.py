"""Owning background tasks: from an ``async with`` block, or from a plain object that has a close().

:func:`exit_task_group` leaves a task group that an ``async with`` object entered on its caller's
behalf. :class:`TaskHost` is for objects that are closed from any task, like a grpc.aio channel:
their task group runs in one task of its own, which :meth:`TaskHost.close` cancels and joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

__all__ = ["EnterOnce", "TaskHost", "exit_task_group"]

logger = logging.getLogger("aiodiscovery")

# The hosts' tasks: asyncio itself keeps only weak references, and the object that started one
# may be garbage collected while its task still winds down.
_RUNNING: set[asyncio.Task[None]] = set()


async def exit_task_group(
    task_group: anyio.abc.TaskGroup,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool:
    """Cancel the background tasks of ``task_group`` and leave it, from an ``__aexit__``.

    A cancellation is passed through the group, so that anyio can tell whose it is. Any other
    error of the caller's block is not: the group would wrap it in an ExceptionGroup, and swallowing
    its own cancellation it could swallow that error too. Returns whether to suppress ``exc``.
    """
    task_group.cancel_scope.cancel()
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return bool(await task_group.__aexit__(exc_type, exc, tb))
    await task_group.__aexit__(None, None, None)
    return False


class EnterOnce:
    """The guard of an ``async with`` object that may be entered only once."""

    __slots__ = ("_what", "entered")

    def __init__(self, what: str) -> None:
        self._what = what
        self.entered = False

    def enter(self) -> None:
        """Note the entry; :class:`RuntimeError` if it is not the first."""
        if self.entered:
            raise RuntimeError(f"a {self._what} can be entered only once; create a new one")
        self.entered = True


class TaskHost:
    """A task group living in a task of its own until :meth:`close`.

    The tasks it runs must handle their own errors: one that raises is logged and ends every
    task of the host, because nothing else could ever report it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._task_group: anyio.abc.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether tasks can be started."""
        return self._task_group is not None and not self._closed

    async def open(self) -> None:
        """Start the host task and return once its task group is ready."""
        if self._task is not None:
            raise RuntimeError(f"{self.name} is already open")
        ready = asyncio.Event()
        self._task = task = asyncio.get_running_loop().create_task(
            self._host(ready), name=self.name
        )
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        await ready.wait()

    async def _host(self, ready: asyncio.Event) -> None:
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                ready.set()
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException:
            logger.exception("%s: a background task failed; its siblings were stopped", self.name)
        finally:
            self._task_group = None
            ready.set()

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str
    ) -> None:
        """Run ``func(*args)`` in the host's task group."""
        if self._task_group is None or self._closed:
            raise RuntimeError(f"{self.name} is closed")
        self._task_group.start_soon(func, *args, name=name)

    async def start(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str
    ) -> Any:
        """Run ``func(*args, task_status=...)`` in the host's task group; return what it reports
        with ``task_status.started()``."""
        if self._task_group is None or self._closed:
            raise RuntimeError(f"{self.name} is closed")
        return await self._task_group.start(func, *args, name=name)

    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None:
        """Run ``func(*args)`` on the host's event loop, from any thread (a finalizer's)."""
        task = self._task
        if task is not None and not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(func, *args)

    def cancel(self) -> None:
        """Cancel every task without waiting (from synchronous code on the host's loop)."""
        self._closed = True
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def close(self) -> None:
        """Cancel every task and wait for them to finish (shielded from the caller's cancel)."""
        self.cancel()
        task = self._task
        if task is None:
            return
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await task
