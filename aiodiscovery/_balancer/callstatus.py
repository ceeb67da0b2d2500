"""The status of a finished call, read without awaiting: from a done callback, on the hot path.

grpc.aio only offers a call's status through coroutines (``await call.code()``), but the pool
must see each outcome in the call's done callback, synchronously and cheaply (outlier counters,
retry decisions, retry throttling). The status is there already: grpc.aio's call keeps the
finished status of its Cython call. This module is the one place that reads those private
attributes; each reader returns ``None`` when it cannot tell, and the callers then treat the call
as one they know nothing about (not counted, not retried). ``tests/test_pool_retry.py`` checks
that the grpcio installed still exposes them.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from .deferred import DeferredCall

__all__ = ["CANCELLED", "OK", "UNAVAILABLE", "Ended", "code_value", "ended", "status_code"]


def code_value(code: grpc.StatusCode) -> int:
    """The wire number of ``code`` (what Cython statuses hold)."""
    value: int = code.value[0]
    return value


OK = code_value(grpc.StatusCode.OK)
CANCELLED = code_value(grpc.StatusCode.CANCELLED)
UNAVAILABLE = code_value(grpc.StatusCode.UNAVAILABLE)
_UNKNOWN = code_value(grpc.StatusCode.UNKNOWN)
# Wrappers around wrappers (interceptors, a deferred call launched late): a bound, not a trust.
_MAX_DEPTH = 8


def _innermost(call: object) -> object | None:
    """The Cython call under ``call``, an AioRpcError it ended with, or None if not finished."""
    for _ in range(_MAX_DEPTH):
        cython: object = getattr(call, "_cython_call", None)
        if cython is not None:
            return cython
        if isinstance(call, DeferredCall):
            real = call.real
            if real is None:
                return call
            call = real
            continue
        # An intercepted call: its interceptors' task gives the call the last one made.
        task = getattr(call, "_interceptors_task", None)
        if task is None or not task.done():
            return None
        if task.cancelled():
            cancelled: object = grpc.aio.AioRpcError(
                grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
            return cancelled
        error: object = task.exception()
        if error is not None:
            return error
        call = task.result()
    return None


def status_code(call: object) -> int | None:
    """The status code number of the finished ``call``, or None if it cannot be read now."""
    # grpc.aio's own call first, without isinstance(): checks against abstract classes cost
    # microseconds each time something registers a virtual subclass somewhere.
    cython: Any = getattr(call, "_cython_call", None)
    if cython is not None:
        status = getattr(cython, "_status", None)
        return None if status is None else int(status.code())
    inner = _innermost(call)
    try:
        if isinstance(inner, DeferredCall):
            return None if inner.ended_code is None else code_value(inner.ended_code)
        if isinstance(inner, grpc.aio.AioRpcError):
            return code_value(inner.code())
        if isinstance(inner, BaseException):
            return _UNKNOWN
        if inner is None:
            return None
        status = inner._status  # type: ignore[attr-defined]
        return None if status is None else int(status.code())
    except (AttributeError, TypeError, ValueError):
        return None


class Ended:
    """What a retry decision needs of a failed attempt: details and metadata, read once."""

    __slots__ = ("details", "initial_metadata", "trailing_metadata")

    def __init__(
        self,
        details: str,
        initial_metadata: tuple[tuple[str, str | bytes], ...],
        trailing_metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        self.details = details
        self.initial_metadata = initial_metadata
        self.trailing_metadata = trailing_metadata


def ended(call: object) -> Ended | None:
    """Details and metadata of the finished ``call``, or None if they cannot be read now."""
    inner = _innermost(call)
    try:
        if isinstance(inner, DeferredCall):
            return Ended(inner.ended_details, (), ())
        if isinstance(inner, grpc.aio.AioRpcError):
            return Ended(
                inner.details() or "",
                tuple(inner.initial_metadata() or ()),
                tuple(inner.trailing_metadata() or ()),
            )
        if inner is None or isinstance(inner, BaseException):
            return None
        status = inner._status  # type: ignore[attr-defined]
        if status is None:
            return None
        initial = inner._initial_metadata  # type: ignore[attr-defined]
        return Ended(
            str(status.details() or ""),
            tuple(initial or ()),
            tuple(status.trailing_metadata() or ()),
        )
    except (AttributeError, TypeError, ValueError):
        return None
