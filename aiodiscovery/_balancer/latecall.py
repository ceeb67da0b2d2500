"""A call object that stands for a grpc.aio call chosen later, or for none at all.

The pool hands out two such objects: a call waiting for an endpoint
(:class:`~.deferred.DeferredCall`) and a call made of several attempts
(:class:`~aiodiscovery._pool.retrying.RetryingUnaryUnaryCall`). Both have the shape of the grpc.aio
call they stand for and, once :meth:`LateCall._settle`\\ d on a real call, delegate everything to
it; or they :meth:`LateCall.end` without one (no endpoint, deadline, cancelled, channel closed)
and answer from what they were ended with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

__all__ = ["LOCALLY_CANCELLED", "LateCall"]

logger = logging.getLogger("aiodiscovery.pool")

# What grpc.aio reports for a call stopped with cancel().
LOCALLY_CANCELLED = "Locally cancelled by application!"


class LateCall(grpc.aio.Call):  # type: ignore[misc]
    """A call whose real grpc.aio call is known later (:meth:`_settle`), or never (:meth:`end`).

    Any number of tasks may await it. Done callbacks run once, when it has settled on a real call
    that is done, or when it ended without one.
    """

    # Defaults live in the class: most calls never change them, and a retrying call is made for
    # every unary call, where setting a dozen attributes more is measurable.
    _deadline: float | None = None
    _real: Any = None
    # Set when the call ended without a real call.
    _code: grpc.StatusCode | None = None
    _details = ""
    _locally_cancelled = False
    _callbacks: list[Callable[[Any], None]] | None = None
    _is_settled = False
    # Made only when someone waits: most calls settle before anyone asks. asyncio's, not
    # anyio's: it is set in synchronous code, maybe outside any task (a done callback making a
    # call), where anyio cannot tell which event loop library runs.
    _settled: asyncio.Event | None = None

    def __init__(self, target: str, request: Any, kwargs: dict[str, Any]) -> None:
        self._target = target
        self._request = request
        self._kwargs = kwargs
        timeout = kwargs.get("timeout")
        if timeout is not None:
            self._deadline = time.monotonic() + timeout

    # -- what the pool and the status readers see -------------------------------------------

    @property
    def real(self) -> Any:
        """The real grpc.aio call this one settled on, or None (not yet, or ended without)."""
        return self._real

    @property
    def ended_code(self) -> grpc.StatusCode | None:
        """The code this call ended with without a real call, or None."""
        return self._code

    @property
    def ended_details(self) -> str:
        """The details this call ended with without a real call."""
        return self._details

    def end(self, code: grpc.StatusCode, details: str, *, local: bool = False) -> bool:
        """End the call without a real call; False if it had settled or ended already."""
        if self._is_settled:
            return False
        self._code, self._details, self._locally_cancelled = code, details, local
        self._mark_settled()
        self._ended()
        self._run_callbacks()
        return True

    # -- for subclasses ---------------------------------------------------------------------

    def _settle(self, real: Any) -> None:
        """Delegate to ``real`` from now on; done callbacks follow it."""
        self._real = real
        self._mark_settled()
        if real.done():
            # Most retrying calls settle on an attempt that just finished.
            self._run_callbacks()
        else:
            real.add_done_callback(self._real_done)

    def _ended(self) -> None:
        """Hook: the call just ended without a real call."""

    def _mark_settled(self) -> None:
        self._is_settled = True
        if self._settled is not None:
            self._settled.set()

    def _real_done(self, _real: object) -> None:
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        if not callbacks:
            return
        self._callbacks = None
        for callback in callbacks:
            # One failing callback must neither skip the others nor escape from cancel().
            try:
                callback(self)
            except Exception:
                logger.exception("done callback %r of a call failed", callback)

    async def _started(self) -> Any:
        """The real call once settled, or None if the call ended without one."""
        if self._is_settled:
            # Yield anyway, as awaiting any grpc.aio call does: a caller retrying a call that
            # fails at once (no endpoint) in a loop must not starve the event loop.
            await asyncio.sleep(0)
        else:
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()
        return self._real

    async def _resolve(self) -> Any:
        real = await self._started()
        if real is not None:
            return real
        raise self._error()

    def _error(self) -> BaseException:
        """What awaiting the call raises when it ended without a real call."""
        if self._locally_cancelled:
            return asyncio.CancelledError()
        # A fresh error per awaiter: a shared instance would pile up their tracebacks.
        error: BaseException = grpc.aio.AioRpcError(
            self._code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=self._details
        )
        return error

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
        """Cancel the call; False if it had already finished."""
        if self._real is not None:
            return bool(self._real.cancel())
        return self.end(grpc.StatusCode.CANCELLED, LOCALLY_CANCELLED, local=True)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(call)`` once when the call finishes, however it finishes."""
        if self.done():
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)
