"""Leaving a task group that an ``async with`` object entered on its caller's behalf."""

from __future__ import annotations

from types import TracebackType

import anyio
import anyio.abc

__all__ = ["exit_task_group"]


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
