"""Cancellation-safe steps on grpc.aio calls, for every stream the package keeps open."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["close_call", "rpc_step"]

T = TypeVar("T")


async def rpc_step(step: Awaitable[T]) -> T:
    """Await a grpc.aio call (or a stream's read or write) so that anyio scopes see its cancel."""
    try:
        return await step
    except asyncio.CancelledError:
        # grpc.aio often swallows the cancellation it is given and raises a bare CancelledError of
        # its own (a unary call, a stream still being set up), which anyio cannot tell from a
        # foreign one: it would escape move_on_after and cancel the whole task. A checkpoint lets
        # the cancelled scope deliver its own cancellation instead.
        await checkpoint()
        raise


async def close_call(call: Any) -> None:
    """Cancel a grpc.aio call and let grpc's own bookkeeping task for it finish."""
    call.cancel()
    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
        await call.code()
