"""The multi-callables a :class:`BalancedChannel` hands to stubs: a subchannel picked per call.

One factory, :func:`multi_callable`, builds all four kinds; each is a subclass of grpc.aio's own
abstract multi-callable of that kind, so stubs and type checks see what they expect. A call
goes straight to the picked subchannel when the pool has a usable one, and returns grpc.aio's
own call object from it; otherwise the pool defers it (see :mod:`aiodiscovery._balancer.deferred`).
A unary-unary or unary-stream call that the pool may send again (see
:mod:`.retrying`) is a retrying call object instead, which starts each attempt the
same way; the rules for the method are looked up once, when the multi-callable is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc.aio

from .._balancer.deferred import (
    DeferredCall,
    DeferredStreamStreamCall,
    DeferredStreamUnaryCall,
    DeferredUnaryStreamCall,
    DeferredUnaryUnaryCall,
)
from .._balancer.subchannel import CallKind, MethodKey
from .._resilience.retrypolicy import MethodRetry
from .retrying import RetryingUnaryStreamCall, RetryingUnaryUnaryCall

if TYPE_CHECKING:
    from .pool import Pool

__all__ = ["multi_callable"]


class _Balanced:
    """Picks a subchannel for each call of one method."""

    __slots__ = ("_deferred", "_key", "_pool")

    def __init__(self, pool: Pool, key: MethodKey, deferred: type[DeferredCall]) -> None:
        self._pool = pool
        # Keyed by value, not by this object: stubs built per request share one cache entry.
        self._key = key
        self._deferred = deferred

    def __call__(self, request: Any = None, **kwargs: Any) -> Any:
        pool = self._pool
        if pool.usable:
            return pool.picker.pick().start(self._key, request, kwargs)
        return pool.defer(self._deferred, self._key, request, kwargs)


class _Retried(_Balanced):
    """A unary-request method whose calls the pool may send again."""

    __slots__ = ("_rules",)
    _call: type[RetryingUnaryUnaryCall | RetryingUnaryStreamCall]

    def __init__(
        self, pool: Pool, key: MethodKey, deferred: type[DeferredCall], rules: MethodRetry
    ) -> None:
        super().__init__(pool, key, deferred)
        self._rules = rules

    def __call__(self, request: Any = None, **kwargs: Any) -> Any:
        return self._call(self._pool, self._key, request, kwargs, self._rules, self._deferred)


class _UnaryUnary(_Balanced, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _UnaryStream(_Balanced, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _RetriedUnaryUnary(_Retried, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _call = RetryingUnaryUnaryCall


class _RetriedUnaryStream(_Retried, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _call = RetryingUnaryStreamCall


class _StreamUnary(_Balanced, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _StreamStream(_Balanced, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()


_KINDS: dict[CallKind, tuple[type[_Balanced], type[DeferredCall]]] = {
    CallKind.UNARY_UNARY: (_UnaryUnary, DeferredUnaryUnaryCall),
    CallKind.UNARY_STREAM: (_UnaryStream, DeferredUnaryStreamCall),
    CallKind.STREAM_UNARY: (_StreamUnary, DeferredStreamUnaryCall),
    CallKind.STREAM_STREAM: (_StreamStream, DeferredStreamStreamCall),
}


_RETRIED: dict[CallKind, type[_Retried]] = {
    CallKind.UNARY_UNARY: _RetriedUnaryUnary,
    CallKind.UNARY_STREAM: _RetriedUnaryStream,
}


def multi_callable(pool: Pool, key: MethodKey) -> Any:
    """The balanced multi-callable over ``pool`` for the method ``key`` names."""
    kind = key[0]
    class_, deferred = _KINDS[kind]
    retried = _RETRIED.get(kind)
    if retried is not None:
        retry = pool.retry.for_method(key[1])
        if retry is not None:
            return retried(pool, key, deferred, retry)
    return class_(pool, key, deferred)
