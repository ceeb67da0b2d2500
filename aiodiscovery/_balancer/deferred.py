"""Calls made while the pool has no usable endpoint, and the queue where they wait for one.

A deferred call has the shape of the grpc.aio call it stands for (:class:`DeferredUnaryUnaryCall`
and its three siblings mirror ``grpc.aio.UnaryUnaryCall`` and the others, built from the same
response and request mixins). It is passive: the pool's :class:`WaitQueue` holds it, and the pool
either :meth:`~DeferredCall.launch`\\ es it on a subchannel, from then on delegating everything
to that grpc.aio call, or :meth:`~DeferredCall.end`\\ s it. On its own it only ever ends, on its
deadline or its :meth:`~DeferredCall.cancel`, and it leaves the queue through the done callback
the queue gave it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from .latecall import LateCall
from .subchannel import MethodKey

__all__ = [
    "DeferredCall",
    "DeferredStreamStreamCall",
    "DeferredStreamUnaryCall",
    "DeferredUnaryStreamCall",
    "DeferredUnaryUnaryCall",
    "WaitQueue",
]

# Starts the real call: (request, call keyword arguments) -> a grpc.aio call.
Start = Callable[[Any, dict[str, Any]], Any]


class DeferredCall(LateCall):
    """A call made while the pool had no usable endpoint.

    Created already ended (``UNAVAILABLE``) when it cannot wait, or waiting in the pool's queue
    (``wait_for_ready``) until the pool launches it on the first usable subchannel, whether or
    not anyone awaits it yet, as grpc.aio sends a call at once. Before that it ends on its
    deadline (``DEADLINE_EXCEEDED``), its own :meth:`cancel` (awaiting it raises
    ``asyncio.CancelledError``, as in grpc.aio), or the channel's close (``CANCELLED``,
    ``"channel closed"``). Any number of tasks may await it: one that gives up (its own timeout or
    cancellation) leaves the call to the others, so stop it with :meth:`cancel` or bound it with a
    deadline.
    """

    def __init__(self, target: str, request: Any, kwargs: dict[str, Any]) -> None:
        super().__init__(target, request, kwargs)
        # The call starts from the pool's task: it must still see the caller's context
        # variables (tracing interceptors read them), as a call started at once would.
        self._context = contextvars.copy_context()
        self._timer: asyncio.TimerHandle | None = None
        timeout = kwargs.get("timeout")
        if timeout is not None:
            # A timer, not a task: the deadline must end the call even if nobody awaits it.
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    @property
    def waits_for_ready(self) -> bool:
        """Whether the caller asked to wait for an endpoint (``wait_for_ready=True``)."""
        return bool(self._kwargs.get("wait_for_ready"))

    # -- driven by the pool -----------------------------------------------------------------

    def launch(self, start: Start) -> None:
        """Start the real call with ``start``; the pool has taken this call out of its queue."""
        if self._timer is not None:
            self._timer.cancel()
        kwargs = self._kwargs
        if self._deadline is not None:
            kwargs = {**kwargs, "timeout": max(0.0, self._deadline - time.monotonic())}
        try:
            real = self._context.run(start, self._request, kwargs)
        except Exception as exc:
            # This runs in the pool's task: the error belongs to the call, not to the pool.
            self.end(grpc.StatusCode.INTERNAL, f"could not start the call: {exc!r}")
            return
        self._settle(real)

    # -- internals --------------------------------------------------------------------------

    def _ended(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        self.end(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline passed while waiting for an endpoint of {self._target!r}",
        )


class _UnaryResponse(DeferredCall):
    """A call answered with one message: await it."""

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await_response().__await__()

    async def _await_response(self) -> Any:
        return await (await self._resolve())


class _StreamResponse(DeferredCall):
    """A call answered with a stream: iterate it or :meth:`read` it."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for item in await self._resolve():
            yield item

    async def read(self) -> Any:
        """Read one response, or ``grpc.aio.EOF``."""
        return await (await self._resolve()).read()


class _StreamRequest(DeferredCall):
    """A call sending a stream: :meth:`write` it, then :meth:`done_writing`."""

    async def write(self, request: Any) -> None:
        """Write one request."""
        await (await self._resolve()).write(request)

    async def done_writing(self) -> None:
        """Close the request stream."""
        await (await self._resolve()).done_writing()


class DeferredUnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A deferred unary-unary call."""


class DeferredUnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """A deferred unary-stream call."""


class DeferredStreamUnaryCall(
    _StreamRequest,
    _UnaryResponse,
    grpc.aio.StreamUnaryCall,  # type: ignore[misc]
):
    """A deferred stream-unary call."""


class DeferredStreamStreamCall(
    _StreamRequest,
    _StreamResponse,
    grpc.aio.StreamStreamCall,  # type: ignore[misc]
):
    """A deferred stream-stream call."""


class WaitQueue:
    """The calls waiting for an endpoint, oldest first, with the method each one calls.

    The pool owns it; a call leaves it when the pool takes it out (:meth:`pop_oldest`,
    :meth:`end_all`) or, when it ends by itself, through the done callback :meth:`add` gave it.
    """

    def __init__(self) -> None:
        # A dict is an ordered set.
        self._calls: dict[DeferredCall, MethodKey] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call: DeferredCall, key: MethodKey) -> None:
        """Queue ``call``, which calls the method ``key`` once launched."""
        self._calls[call] = key
        call.add_done_callback(self._discard)

    def _discard(self, call: DeferredCall) -> None:
        self._calls.pop(call, None)

    def pop_oldest(self) -> tuple[DeferredCall, MethodKey]:
        """Take out the call that has waited longest (the queue must not be empty)."""
        call = next(iter(self._calls))
        return call, self._calls.pop(call)

    def end_all(self, code: grpc.StatusCode, details: str) -> None:
        """End every waiting call with ``code`` and ``details``."""
        calls, self._calls = self._calls, {}
        for call in calls:
            call.end(code, details)

    def end_impatient(self, code: grpc.StatusCode, details: str) -> None:
        """End the waiting calls that did not ask to wait for an endpoint (``wait_for_ready``).

        Such a call waits only while an endpoint is about to become usable (its first health
        answer is on its way), as grpc queues a call while its subchannel connects.
        """
        impatient = [call for call in self._calls if not call.waits_for_ready]
        for call in impatient:
            del self._calls[call]
            call.end(code, details)
