"""BalancedChannel: a ``grpc.aio.Channel`` that spreads calls over a service's live endpoints.

grpcio cannot plug in a custom resolver or balancer, so the pool keeps one ordinary ``grpc.aio``
channel per distinct address (a subchannel), follows the :class:`Watcher`'s endpoint set, and
picks a subchannel for each call. The call itself is grpc.aio's own call object from that
subchannel, so stubs, metadata, deadlines, cancellation and streaming behave as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from ._policies import Picker, make_picker
from ._watcher import EndpointSet, Watcher

__all__ = ["BalancedChannel", "PoolStatistics", "SubchannelStatistics", "resolve"]

logger = logging.getLogger("aiodiscovery")

_State = grpc.ChannelConnectivity
# Order of preference when no subchannel is READY: IDLE connects on demand, CONNECTING may make it.
_FALLBACK_ORDER = (_State.IDLE, _State.CONNECTING, _State.TRANSIENT_FAILURE)
DEFAULT_DRAIN_TIMEOUT = 30.0


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
    for an endpoint until its deadline. A removed endpoint drains: it takes no new calls, its calls
    in flight finish, then its channel closes.
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
        self._pickable = anyio.Event()
        self._revision = 0
        self._no_endpoint_failures = 0
        self._closed = False
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
                raise
            finally:
                started.set()
                with anyio.CancelScope(shield=True):
                    await self._close_subchannels()

        # The channel is a plain object (closed from any task, like every grpc.aio channel), so
        # its task group needs a task of its own; close() cancels and joins it.
        self._host = asyncio.get_running_loop().create_task(
            host(), name=f"aiodiscovery pool {self.target}"
        )
        await started.wait()
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
        """Stop following etcd and close every subchannel, letting calls run for ``grace`` s."""
        if self._closed:
            return
        self._closed = True
        self._grace = grace
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
        self._rebuild()

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

    def _rebuild(self) -> None:
        """Recompute the usable list and the aggregate state after any change."""
        subs = list(self._subchannels.values())
        usable = [s for s in subs if s.state is _State.READY]
        if not usable:
            for state in _FALLBACK_ORDER:
                usable = [s for s in subs if s.state is state]
                if usable:
                    break
        if usable != self._usable:
            self._usable = usable
            if usable:
                self._picker.update(usable)
                self._pickable.set()
            else:
                self._pickable = anyio.Event()
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

    # -- picking ----------------------------------------------------------------------------

    async def _wait_pickable(self) -> _Subchannel:
        while not self._usable:
            await self._pickable.wait()
        return self._picker.pick()  # type: ignore[return-value]

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

    It either fails with ``UNAVAILABLE`` (the default) or, for ``wait_for_ready=True``, waits for an
    endpoint until its deadline and then becomes the real grpc.aio call, to which everything is
    delegated from then on.
    """

    def __init__(self, callable_: _MultiCallable, request: Any, kwargs: dict[str, Any]) -> None:
        self._callable = callable_
        self._request = request
        self._kwargs = kwargs
        timeout = kwargs.get("timeout")
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._real: grpc.aio.Call | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._resolving: anyio.Event | None = None

    async def _resolve(self) -> grpc.aio.Call:
        if self._real is None and self._error is None and not self._cancelled:
            if self._resolving is not None:
                await self._resolving.wait()
            else:
                self._resolving = anyio.Event()
                try:
                    await self._connect()
                finally:
                    self._resolving.set()
        if self._cancelled and self._real is None:
            raise asyncio.CancelledError
        if self._error is not None:
            raise self._error
        assert self._real is not None
        return self._real

    async def _connect(self) -> None:
        channel = self._callable._channel
        if not self._kwargs.get("wait_for_ready"):
            channel._no_endpoint_failures += 1
            self._fail(
                grpc.StatusCode.UNAVAILABLE, f"no endpoint registered for {channel.target!r}"
            )
            return
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        sub = None
        with anyio.move_on_after(remaining if remaining is not None else float("inf")):
            sub = await channel._wait_pickable()
        if sub is None:
            self._fail(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline passed while waiting for an endpoint of {channel.target!r}",
            )
            return
        kwargs = dict(self._kwargs)
        if self._deadline is not None:
            kwargs["timeout"] = max(0.0, self._deadline - time.monotonic())
        self._real = self._callable.start_on(sub, self._request, kwargs)
        for callback in self._callbacks:
            self._real.add_done_callback(callback)

    def _fail(self, code: grpc.StatusCode, details: str) -> None:
        self._error = grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
        )
        for callback in self._callbacks:
            callback(self)

    # Call
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
        """The server's initial metadata."""
        try:
            return await (await self._resolve()).initial_metadata()
        except grpc.aio.AioRpcError as exc:
            return exc.initial_metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        """The server's trailing metadata."""
        try:
            return await (await self._resolve()).trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            return exc.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        """The call's status code."""
        try:
            return await (await self._resolve()).code()
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    async def details(self) -> str:
        """The call's status details."""
        try:
            return str(await (await self._resolve()).details())
        except grpc.aio.AioRpcError as exc:
            return str(exc.details() or "")

    async def debug_error_string(self) -> str:
        """gRPC's debug string of the error, if any."""
        try:
            return str(await (await self._resolve()).debug_error_string())
        except grpc.aio.AioRpcError as exc:
            return str(exc.debug_error_string())

    # RpcContext
    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return bool(self._real.cancelled()) if self._real is not None else self._cancelled

    def done(self) -> bool:
        """Whether the call has finished."""
        if self._real is not None:
            return bool(self._real.done())
        return self._cancelled or self._error is not None

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
        if self.done():
            return False
        self._cancelled = True
        for callback in self._callbacks:
            callback(self)
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(call)`` when the call finishes."""
        if self._real is not None:
            self._real.add_done_callback(callback)
        elif self.done():
            callback(self)
        else:
            self._callbacks.append(callback)


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
