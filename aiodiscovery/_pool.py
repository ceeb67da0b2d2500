"""BalancedChannel: a ``grpc.aio.Channel`` that spreads calls over a service's live endpoints.

grpcio cannot plug in a custom resolver or balancer, so the pool keeps one ordinary ``grpc.aio``
channel per distinct address (a subchannel), follows the :class:`Watcher`'s endpoint set, and
picks a subchannel for each call. The call itself is grpc.aio's own call object from that
subchannel, so stubs, metadata, deadlines, cancellation and streaming behave as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aetcd
import anyio
import anyio.abc
import grpc
import grpc.aio

from ._endpointset import EndpointSet
from ._policies import Picker, make_picker
from ._watcher import Watcher

__all__ = ["BalancedChannel", "PoolStatistics", "SubchannelStatistics", "resolve"]

logger = logging.getLogger("aiodiscovery")

_State = grpc.ChannelConnectivity
# Order of preference when no subchannel is READY: IDLE connects on demand, CONNECTING may make it.
_FALLBACK_ORDER = (_State.IDLE, _State.CONNECTING, _State.TRANSIENT_FAILURE)
DEFAULT_DRAIN_TIMEOUT = 30.0
# What grpc.aio reports for a call stopped with cancel().
_LOCALLY_CANCELLED = "Locally cancelled by application!"


class _Kind(enum.Enum):
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"


# (kind, method, request serializer, response deserializer, registered): one grpc multi-callable.
_MethodKey = tuple[_Kind, str, Any, Any, bool | None]


@dataclass(frozen=True)
class SubchannelStatistics:
    """One subchannel's state and counters."""

    state: str
    in_flight: int
    picks: int
    draining: bool


@dataclass(frozen=True)
class PoolStatistics:
    """A :class:`BalancedChannel`'s live state: subchannels by address, calls and picks."""

    target: str
    revision: int
    subchannels: dict[str, SubchannelStatistics]
    in_flight: int
    picks: int
    no_endpoint_failures: int

    def by_state(self) -> dict[str, int]:
        """How many subchannels are in each connectivity state."""
        counts: dict[str, int] = {}
        for sub in self.subchannels.values():
            counts[sub.state] = counts.get(sub.state, 0) + 1
        return counts


class _Subchannel:
    """One gRPC channel to one address, with what the pickers and the drain need to know."""

    def __init__(self, address: str, metadata: object, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.metadata = metadata
        self.channel = channel
        self.state = _State.IDLE
        self.in_flight = 0
        self.picks = 0
        self.draining = False
        self.scope = anyio.CancelScope()
        # Made only while a drain waits: creating an event per idle-to-busy change is measurable
        # on a sequential caller's every call.
        self._idle: anyio.Event | None = None
        self._callables: dict[_MethodKey, Any] = {}

    def start(self, key: _MethodKey) -> Any:
        """The grpc.aio multi-callable for the method ``key`` names on this subchannel."""
        callable_ = self._callables.get(key)
        if callable_ is None:
            kind, method, serializer, deserializer, registered = key
            callable_ = getattr(self.channel, kind.value)(
                method,
                request_serializer=serializer,
                response_deserializer=deserializer,
                _registered_method=registered,
            )
            self._callables[key] = callable_
        return callable_

    def track(self, call: grpc.aio.Call) -> grpc.aio.Call:
        """Count ``call`` in flight until it is done."""
        self.in_flight += 1
        self.picks += 1
        call.add_done_callback(self._done)
        return call

    def _done(self, _call: object) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no call is in flight."""
        while self.in_flight:
            self._idle = anyio.Event()
            await self._idle.wait()
        self._idle = None


class BalancedChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` over every live endpoint of an etcd-registered service.

    Build it with :func:`resolve`. Calls go to a subchannel chosen by the policy among READY ones
    (IDLE, CONNECTING or TRANSIENT_FAILURE ones only when none is READY). With no endpoint at all a
    call fails at once with ``UNAVAILABLE``, unless it asks ``wait_for_ready=True``: then it waits
    for an endpoint until its deadline, :meth:`close` or its own ``cancel()``. A removed endpoint
    drains: it takes no new calls, its calls in flight finish, then its channel closes.
    """

    def __init__(
        self,
        client: aetcd.Client,
        target: str,
        *,
        policy: str | Callable[[], Picker] = "round_robin",
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        compression: grpc.Compression | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        start_timeout: float | None = None,
    ) -> None:
        self.target = target
        self._watcher = Watcher(client, target, start_timeout=start_timeout)
        self._picker = make_picker(policy)
        self._credentials = credentials
        self._options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self._interceptors = list(interceptors) if interceptors else None
        self._compression = compression
        self._drain_timeout = drain_timeout
        self._subchannels: dict[str, _Subchannel] = {}
        self._draining: dict[str, _Subchannel] = {}
        self._usable: list[_Subchannel] = []
        self._state = _State.IDLE
        self._state_changed = anyio.Event()
        # Calls waiting for an endpoint (wait_for_ready), oldest first: a dict is an ordered set.
        self._pending: dict[_PendingCall, None] = {}
        self._revision = 0
        self._no_endpoint_failures = 0
        self._closed = False
        # Why the pool stopped following etcd, once its task has died without close().
        self._stop_reason: str | None = None
        self._grace: float | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def _open(self) -> None:
        started = anyio.Event()
        failure: list[BaseException] = []

        async def host() -> None:
            try:
                async with self._watcher, anyio.create_task_group() as tg:
                    self._task_group = tg
                    self._apply(self._watcher.snapshot)
                    started.set()
                    tg.start_soon(self._follow)
            except BaseException as exc:
                failure.append(exc)
                if not isinstance(exc, anyio.get_cancelled_exc_class()) and started.is_set():
                    logger.exception("%s: the pool stopped following etcd", self.target)
                    self._stop_reason = (
                        f"the pool of {self.target!r} stopped following etcd: {_cause(exc)!r}"
                    )
                raise
            finally:
                started.set()
                with anyio.CancelScope(shield=True):
                    await self._close_subchannels()
                # Nothing will ever make a subchannel usable again: say so, and free the waiters.
                self._set_state(_State.SHUTDOWN if self._closed else _State.TRANSIENT_FAILURE)
                self._fail_pending(
                    grpc.StatusCode.UNAVAILABLE,
                    self._stop_reason or f"the pool of {self.target!r} stopped following etcd",
                )

        # The channel is a plain object (closed from any task, like every grpc.aio channel), so
        # its task group needs a task of its own; close() cancels and joins it.
        self._host = asyncio.get_running_loop().create_task(
            host(), name=f"aiodiscovery pool {self.target}"
        )
        try:
            await started.wait()
        except BaseException:
            # resolve() itself was cancelled: nobody will ever close this channel, so the task,
            # the watcher and its etcd stream must go now.
            self._host.cancel()
            await self._join_host()
            raise
        if failure:
            await self._join_host()
            raise failure[0]

    async def _follow(self) -> None:
        async for snapshot in self._watcher.snapshots():
            self._apply(snapshot)

    async def _join_host(self) -> None:
        host = self._host
        if host is None:
            return
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await host

    async def close(self, grace: float | None = None) -> None:
        """Stop following etcd and close every subchannel, letting calls run for ``grace`` s.

        Calls in flight get ``grace`` seconds to finish, then grpc.aio cancels them, as on any
        of its channels. A call still waiting for an endpoint (``wait_for_ready``) fails at once
        with ``CANCELLED`` and details ``"channel closed"``: an error rather than
        ``asyncio.CancelledError``, so that the task awaiting it is not taken for a cancelled one.
        """
        if self._closed:
            return
        self._closed = True
        self._grace = grace
        self._fail_pending(grpc.StatusCode.CANCELLED, "channel closed")
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        await self._join_host()
        self._set_state(_State.SHUTDOWN)

    async def __aenter__(self) -> BalancedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- following the endpoint set ---------------------------------------------------------

    def _new_subchannel(self, address: str, metadata: object) -> _Subchannel:
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(
                address,
                options=self._options,
                compression=self._compression,
                interceptors=self._interceptors,
            )
        else:
            channel = grpc.aio.secure_channel(
                address,
                self._credentials,
                options=self._options,
                compression=self._compression,
                interceptors=self._interceptors,
            )
        return _Subchannel(address, metadata, channel)

    def _apply(self, snapshot: EndpointSet) -> None:
        """Bring the subchannels in line with ``snapshot``."""
        assert self._task_group is not None
        self._revision = snapshot.revision
        metadata_changed = False
        wanted: dict[str, object] = {}
        for endpoint in snapshot.values():
            wanted.setdefault(endpoint.addr, endpoint.metadata)
        for address, metadata in wanted.items():
            sub = self._subchannels.get(address)
            if sub is None:
                sub = self._draining.pop(address, None)
                if sub is not None:
                    logger.info("%s: endpoint %s is back; it stops draining", self.target, address)
                    sub.draining = False
                    sub.scope.cancel()
                    sub.scope = anyio.CancelScope()
                else:
                    logger.info("%s: new endpoint %s", self.target, address)
                    sub = self._new_subchannel(address, metadata)
                self._subchannels[address] = sub
                self._task_group.start_soon(self._monitor, sub)
            if sub.metadata != metadata:
                # Pickers read metadata (the weight) only in update(); the list itself may not
                # change, so a usable subchannel's new metadata must force one.
                metadata_changed = metadata_changed or sub in self._usable
                sub.metadata = metadata
        for address in [a for a in self._subchannels if a not in wanted]:
            sub = self._subchannels.pop(address)
            sub.draining = True
            self._draining[address] = sub
            logger.info(
                "%s: endpoint %s removed; draining %d calls", self.target, address, sub.in_flight
            )
            sub.scope.cancel()
            sub.scope = anyio.CancelScope()
            self._task_group.start_soon(self._drain, sub)
        self._rebuild(refresh=metadata_changed)

    async def _monitor(self, sub: _Subchannel) -> None:
        with sub.scope:
            state = sub.channel.get_state(try_to_connect=True)
            while True:
                if state is not sub.state:
                    sub.state = state
                    self._rebuild()
                if state is _State.IDLE:
                    # Connect eagerly: a new or recovered endpoint should take calls at once.
                    sub.channel.get_state(try_to_connect=True)
                await sub.channel.wait_for_state_change(state)
                state = sub.channel.get_state(try_to_connect=False)

    async def _drain(self, sub: _Subchannel) -> None:
        with sub.scope:
            with anyio.move_on_after(self._drain_timeout):
                await sub.wait_idle()
            if sub.in_flight:
                logger.warning(
                    "%s: closing removed endpoint %s with %d calls still in flight",
                    self.target,
                    sub.address,
                    sub.in_flight,
                )
            del self._draining[sub.address]
            with anyio.CancelScope(shield=True):
                await sub.channel.close(None)
            logger.info("%s: endpoint %s closed", self.target, sub.address)

    async def _close_subchannels(self) -> None:
        subs = [*self._subchannels.values(), *self._draining.values()]
        self._subchannels.clear()
        self._draining.clear()
        self._usable = []
        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(sub.channel.close, self._grace)

    def _rebuild(self, *, refresh: bool = False) -> None:
        """Recompute the usable list and the aggregate state after any change.

        ``refresh`` hands the picker the usable list even if it is the same one.
        """
        subs = list(self._subchannels.values())
        usable = [s for s in subs if s.state is _State.READY]
        if not usable:
            for state in _FALLBACK_ORDER:
                usable = [s for s in subs if s.state is state]
                if usable:
                    break
        if usable != self._usable or (refresh and usable):
            if usable:
                # Before publishing the list: a picker that fails must not be picked from.
                self._picker.update(usable)
            self._usable = usable
            if usable:
                self._start_pending()
        states = {s.state for s in subs}
        for state in (_State.READY, _State.CONNECTING, _State.IDLE, _State.TRANSIENT_FAILURE):
            if state in states:
                break
        else:
            state = _State.TRANSIENT_FAILURE
        self._set_state(state)

    def _set_state(self, state: grpc.ChannelConnectivity) -> None:
        if state is not self._state:
            self._state = state
            changed, self._state_changed = self._state_changed, anyio.Event()
            changed.set()

    # -- calls waiting for an endpoint -------------------------------------------------------

    def _start_pending(self) -> None:
        # One at a time, picking before dequeuing: if a picker fails, the calls not yet started
        # stay pending and the host's exit fails them, instead of their being lost.
        while self._pending:
            sub: _Subchannel = self._picker.pick()  # type: ignore[assignment]
            call = next(iter(self._pending))
            del self._pending[call]
            call._start(sub)

    def _fail_pending(self, code: grpc.StatusCode, details: str) -> None:
        pending, self._pending = self._pending, {}
        for call in pending:
            call._end(code, details)

    # -- grpc.aio.Channel -------------------------------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY if any subchannel is READY, else the most hopeful state among them.

        With no endpoint at all the state is TRANSIENT_FAILURE; after :meth:`close`, SHUTDOWN.
        """
        if try_to_connect:
            for sub in self._subchannels.values():
                if sub.state is _State.IDLE:
                    sub.channel.get_state(try_to_connect=True)
        return self._state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until :meth:`get_state` differs from ``last_observed_state``."""
        while self._state is last_observed_state:
            await self._state_changed.wait()

    async def channel_ready(self) -> None:
        """Wait until at least one subchannel is READY."""
        while (state := self.get_state(try_to_connect=True)) is not _State.READY:
            if state is _State.SHUTDOWN:
                raise RuntimeError("the channel is closed")
            if self._stop_reason is not None:
                raise RuntimeError(self._stop_reason)
            await self.wait_for_state_change(state)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:
        """A multi-callable for a unary-unary method, balanced per call."""
        return _MultiCallable(
            self,
            (
                _Kind.UNARY_UNARY,
                method,
                request_serializer,
                response_deserializer,
                _registered_method,
            ),
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:
        """A multi-callable for a unary-stream method, balanced per call."""
        return _MultiCallable(
            self,
            (
                _Kind.UNARY_STREAM,
                method,
                request_serializer,
                response_deserializer,
                _registered_method,
            ),
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:
        """A multi-callable for a stream-unary method, balanced per call."""
        return _MultiCallable(
            self,
            (
                _Kind.STREAM_UNARY,
                method,
                request_serializer,
                response_deserializer,
                _registered_method,
            ),
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:
        """A multi-callable for a stream-stream method, balanced per call."""
        return _MultiCallable(
            self,
            (
                _Kind.STREAM_STREAM,
                method,
                request_serializer,
                response_deserializer,
                _registered_method,
            ),
        )

    # -- introspection ----------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """Subchannels by address (state, calls in flight, picks), totals and failures."""
        subs = {
            a: SubchannelStatistics(s.state.name, s.in_flight, s.picks, s.draining)
            for a, s in [*self._subchannels.items(), *self._draining.items()]
        }
        return PoolStatistics(
            target=self.target,
            revision=self._revision,
            subchannels=subs,
            in_flight=sum(s.in_flight for s in subs.values()),
            picks=sum(s.picks for s in subs.values()),
            no_endpoint_failures=self._no_endpoint_failures,
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        states = " ".join(f"{k}={v}" for k, v in sorted(stats.by_state().items())) or "no endpoints"
        return (
            f"<BalancedChannel {self.target!r} {self._state.name} {states} "
            f"in_flight={stats.in_flight} picks={stats.picks}>"
        )


class _MultiCallable:
    """What ``channel.unary_unary(...)`` and friends return: picks a subchannel per call."""

    __slots__ = ("_channel", "_key")

    def __init__(self, channel: BalancedChannel, key: _MethodKey) -> None:
        self._channel = channel
        # Keyed by value, not by this object: stubs built per request share one cache entry.
        self._key = key

    def __call__(self, request: Any = None, **kwargs: Any) -> Any:
        channel = self._channel
        if channel._usable:
            sub: _Subchannel = channel._picker.pick()  # type: ignore[assignment]
            return sub.track(sub.start(self._key)(request, **kwargs))
        if channel._closed:
            raise grpc.aio.UsageError("Channel is closed.")
        return _PendingCall(self, request, kwargs)

    def start_on(self, sub: _Subchannel, request: Any, kwargs: dict[str, Any]) -> grpc.aio.Call:
        """Start the call on ``sub`` (for a call that had to wait for an endpoint)."""
        return sub.track(sub.start(self._key)(request, **kwargs))


class _PendingCall:
    """A call made while the pool has no usable endpoint.

    Without ``wait_for_ready`` it has already failed with ``UNAVAILABLE``. With it, it waits in
    the channel's pending set until the channel starts it on the first usable subchannel (whether
    or not anyone awaits it yet, as grpc.aio sends a call at once), and from then on everything is
    delegated to that grpc.aio call. Before that it ends on its deadline (``DEADLINE_EXCEEDED``),
    its own :meth:`cancel` (awaiting it raises ``asyncio.CancelledError``, as in grpc.aio), or
    :meth:`BalancedChannel.close` (``CANCELLED``, ``"channel closed"``). Any number of tasks may
    await it: one that gives up (its own timeout or cancellation) leaves the call to the others,
    so stop it with :meth:`cancel` or bound it with a deadline.
    """

    def __init__(self, callable_: _MultiCallable, request: Any, kwargs: dict[str, Any]) -> None:
        channel = callable_._channel
        self._callable = callable_
        self._request = request
        self._kwargs = kwargs
        # The call starts from the channel's task: it must still see the caller's context
        # variables (tracing interceptors read them), as a call started at once would.
        self._context = contextvars.copy_context()
        timeout = kwargs.get("timeout")
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._real: grpc.aio.Call | None = None
        # Set when the call ended before it could start.
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._locally_cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        # asyncio's, not anyio's: this runs in synchronous code, maybe outside any task (a done
        # callback making a call), where anyio cannot tell which event loop library runs.
        self._settled = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        if channel._stop_reason is not None:
            self._end(grpc.StatusCode.UNAVAILABLE, channel._stop_reason)
        elif not kwargs.get("wait_for_ready"):
            channel._no_endpoint_failures += 1
            self._end(grpc.StatusCode.UNAVAILABLE, f"no endpoint registered for {channel.target!r}")
        else:
            channel._pending[self] = None
            if timeout is not None:
                # A timer, not a task: the deadline must end the call even if nobody awaits it.
                self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    # -- driven by the channel --------------------------------------------------------------

    def _start(self, sub: _Subchannel) -> None:
        """Start the real call on ``sub``; the channel has taken this call out of its set."""
        if self._timer is not None:
            self._timer.cancel()
        kwargs = self._kwargs
        if self._deadline is not None:
            kwargs = {**kwargs, "timeout": max(0.0, self._deadline - time.monotonic())}
        try:
            real = self._context.run(self._callable.start_on, sub, self._request, kwargs)
        except Exception as exc:
            # This runs in the channel's task: the error belongs to the call, not to the pool.
            self._end(grpc.StatusCode.INTERNAL, f"could not start the call: {exc!r}")
            return
        self._real = real
        self._settled.set()
        real.add_done_callback(self._real_done)

    def _end(self, code: grpc.StatusCode, details: str, *, local: bool = False) -> bool:
        """End the call before it started; False if it had started or ended already."""
        if self._real is not None or self._code is not None:
            return False
        self._code, self._details, self._locally_cancelled = code, details, local
        self._callable._channel._pending.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
        self._settled.set()
        self._run_callbacks()
        return True

    def _expire(self) -> None:
        self._end(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline passed while waiting for an endpoint of {self._callable._channel.target!r}",
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

    async def _started(self) -> grpc.aio.Call | None:
        """The real call once started, or None if the call ended before it could start."""
        await self._settled.wait()
        return self._real

    async def _resolve(self) -> grpc.aio.Call:
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

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await_response().__await__()

    async def _await_response(self) -> Any:
        return await (await self._resolve())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for item in await self._resolve():
            yield item

    async def read(self) -> Any:
        """Read one response (streaming responses)."""
        return await (await self._resolve()).read()

    async def write(self, request: Any) -> None:
        """Write one request (streaming requests)."""
        await (await self._resolve()).write(request)

    async def done_writing(self) -> None:
        """Close the request stream."""
        await (await self._resolve()).done_writing()

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
        """Whether the call ended with ``CANCELLED``: its own cancel(), or the channel's close()."""
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
        return self._end(grpc.StatusCode.CANCELLED, _LOCALLY_CANCELLED, local=True)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(call)`` once when the call finishes, however it finishes."""
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)


def _cause(exc: BaseException) -> BaseException:
    """The one error inside nested single-error groups, for a readable message."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def resolve(
    client: aetcd.Client,
    target: str,
    *,
    policy: str | Callable[[], Picker] = "round_robin",
    credentials: grpc.ChannelCredentials | None = None,
    options: Iterable[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    compression: grpc.Compression | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    start_timeout: float | None = None,
) -> BalancedChannel:
    """Return a :class:`BalancedChannel` over the endpoints registered under ``target``.

    ``target`` is ``"etcd:///foo/bar/my-service"`` or ``"foo/bar/my-service"``. The channel is
    returned once the current endpoint set is loaded (an empty one included); it then follows
    etcd until closed. ``policy`` is ``"round_robin"`` (default), ``"pick_first"``, ``"p2c"``,
    ``"weighted"`` or a :class:`Picker` factory; ``credentials``, ``options``, ``interceptors``
    and ``compression`` apply to every subchannel as in ``grpc.aio.secure_channel``.
    """
    channel = BalancedChannel(
        client,
        target,
        policy=policy,
        credentials=credentials,
        options=options,
        interceptors=interceptors,
        compression=compression,
        drain_timeout=drain_timeout,
        start_timeout=start_timeout,
    )
    await channel._open()
    return channel
