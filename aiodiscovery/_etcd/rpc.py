"""The small vocabulary every etcd call shares: error translation, the broken-stream signal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import grpc

from .._exceptions import AuthenticationError, EtcdError, EtcdUnavailableError, LeaseNotFoundError
from .auth import is_token_error

__all__ = ["StreamBroken", "etcd_errors", "member_trouble", "translate_error"]

P = ParamSpec("P")
T = TypeVar("T")


class StreamBroken(Exception):
    """A long-lived etcd stream stopped serving (etcd ended or cancelled it, it went silent, its
    member was left): the caller opens a fresh one."""


def member_trouble(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the member (or proxy) answering could not serve the call: try another one.

    etcd's gRPC proxy reports a request it could not get answered upstream in time as UNKNOWN
    "context deadline exceeded" rather than UNAVAILABLE.
    """
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    return code == grpc.StatusCode.UNKNOWN and "context deadline exceeded" in (exc.details() or "")


def translate_error(exc: grpc.aio.AioRpcError) -> EtcdError:
    """Turn a gRPC error from etcd into the matching :class:`EtcdError`."""
    code = exc.code()
    details = exc.details() or ""
    name = code.name if code is not None else "UNKNOWN"
    if is_token_error(exc):
        hint = (
            "pass username= and password= to connect()"
            if "user name is empty" in details
            else "the auth token was refused"
        )
        return AuthenticationError(f"etcd: {details} ({hint})", code=name, details=details)
    if "lease not found" in details:
        return LeaseNotFoundError(
            f"etcd: {details} (the lease was never granted, has expired or was revoked)",
            code=name,
            details=details,
        )
    if member_trouble(exc):
        message = f"etcd unavailable: {details or name}"
        return EtcdUnavailableError(message, code=name, details=details)
    return EtcdError(f"etcd error {name}: {details}", code=name, details=details)


def etcd_errors(func: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate a coroutine function so that gRPC errors from etcd surface as :class:`EtcdError`."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise translate_error(exc) from exc

    return wrapper
