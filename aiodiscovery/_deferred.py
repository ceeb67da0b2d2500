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
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from ._subchannel import MethodKey

__all__ = [
    "DeferredCall",
    "DeferredStreamStreamCall",
    "DeferredStreamUnaryCall",
    "DeferredUnaryStreamCall",
    "DeferredUnaryUnaryCall",
    "WaitQueue",
]

logger = logging.getLogger("aiodiscovery")

# What grpc.aio reports for a call stopped with cancel().
_LOCALLY_CANCELLED = "Locally cancelled by application!"

# Starts the real call: (request, call keyword arguments) -> a grpc.aio call.
Start = Callable[[Any, dict[str, Any]], Any]


class DeferredCall(grpc.aio.Call):  # type: ignore[misc]
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
        self._target = target
        self._request = request
        self._kwargs = kwargs
        # The call starts from the pool's task: it must still see the caller's context
        # variables (tracing interceptors read them), as a call started at once would.
        self._context = contextvars.copy_context()
        timeout = kwargs.get("timeout")
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._real: Any = None
        # Set when the call ended before it could start.
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._locally_cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        # asyncio's, not anyio's: this runs in synchronous code, maybe outside any task (a done
        # callback making a call), where anyio cannot tell which event loop library runs.
        self._settled = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        if timeout is not None:
            # A timer, not a task: the deadline must end the call even if nobody awaits it.
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

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
        self._real = real
        self._settled.set()
        real.add_done_callback(self._real_done)

    def end(self, code: grpc.StatusCode, details: str, *, local: bool = False) -> bool:
        """End the call before it started; False if it had started or ended already."""
        if self._real is not None or self._code is not None:
            return False
        self._code, self._details, self._locally_cancelled = code, details, local
        if self._timer is not None:
            self._timer.cancel()
        self._settled.set()
        self._run_callbacks()
        return True

    # -- internals --------------------------------------------------------------------------

    def _expire(self) -> None:
        self.end(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline passed while waiting for an endpoint of {self._target!r}",
        )

    def _real_done(self, _real: object) -> None:
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            # One failing callback must neither skip the others nor escape from cancel().
            try:
                callback(self)
            except Exception:
                logger.exception("done callback %r of a call failed", callback)

    async def _started(self) -> Any:
        """The real call once started, or None if the call ended before it could start."""
        if self._settled.is_set():
            # Yield anyway, as awaiting any grpc.aio call does: a caller retrying a call that
            # fails at once (no endpoint) in a loop must not starve the event loop.
            await asyncio.sleep(0)
        else:
            await self._settled.wait()
        return self._real

    async def _resolve(self) -> Any:
        real = await self._started()
        if real is not None:
            return real
        if self._locally_cancelled:
            raise asyncio.CancelledError
        # A fresh error per awaiter: a shared instance would pile up their tracebacks.
        raise grpc.aio.AioRpcError(
            self._code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=self._details
        )

    # -- Call -------------------------------------------------------------------------------

    async def wait_for_connection(self) -> None:
        """Wait until the call has started on a subchannel (or failed)."""
        await (await self._resolve()).wait_for_connection()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """The server's initial metadata (empty if the call never started)."""
        real = await self._started()
        return grpc.aio.Metadata() if real is None else await real.initial_metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        """The server's trailing metadata (empty if the call never started)."""
        real = await self._started()
        return grpc.aio.Metadata() if real is None else await real.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        """The call's status code."""
        real = await self._started()
        return self._code if real is None else await real.code()

    async def details(self) -> str:
        """The call's status details."""
        real = await self._started()
        return self._details if real is None else str(await real.details())

    async def debug_error_string(self) -> str:
        """gRPC's debug string of the error (empty if the call never started)."""
        real = await self._started()
        return "" if real is None else str(await real.debug_error_string())

    # -- RpcContext -------------------------------------------------------------------------

    def cancelled(self) -> bool:
        """Whether the call ended with ``CANCELLED``: its own cancel(), or the channel's close."""
        if self._real is not None:
            return bool(self._real.cancelled())
        return self._code is grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        """Whether the call has finished."""
        if self._real is not None:
            return bool(self._real.done())
        return self._code is not None

    def time_remaining(self) -> float | None:
        """Seconds before the deadline, or ``None`` without one."""
        if self._real is not None:
            remaining: float | None = self._real.time_remaining()
            return remaining
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> bool:
        """Cancel the call; False if it had already finished.

        A call still waiting for an endpoint ends here and is never sent.
        """
        if self._real is not None:
            return bool(self._real.cancel())
        return self.end(grpc.StatusCode.CANCELLED, _LOCALLY_CANCELLED, local=True)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(call)`` once when the call finishes, however it finishes."""
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)


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
