"""A subchannel: one ordinary ``grpc.aio`` channel to one address of a service.

The pool keeps one per distinct address. It is what a :class:`Picker` picks (it satisfies
:class:`SubchannelView`) and the only place where a call is started on a server
(:meth:`Subchannel.start`) and where its outcome is seen (:meth:`Subchannel._call_done`).

Whether it takes new calls has two independent parts: its gRPC connectivity (:attr:`state`,
followed by :meth:`follow_connectivity`) and its eligibility (:attr:`eligible`), which is lost
for as long as any reason to hold it out applies (see :meth:`hold`). Draining is one such
reason; its health check (:mod:`aiodiscovery._resilience.health`, run alongside its
connectivity) and the outlier detector (:mod:`aiodiscovery._resilience.outlier`) hold a
subchannel out the same way, while its connection stays up and its calls in flight finish.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import grpc
import grpc.aio

__all__ = [
    "DRAINING",
    "CallKind",
    "HealthFollower",
    "LoadFollower",
    "MethodKey",
    "Observer",
    "Subchannel",
    "Tally",
]

_State = grpc.ChannelConnectivity

# The reason a removed endpoint's subchannel takes no new calls.
DRAINING = "draining"


class Tally:
    """One subchannel's call outcomes and ejection record (kept by outlier detection)."""

    __slots__ = ("ejected_at", "ejections", "failures", "multiplier", "streak", "successes")

    def __init__(self) -> None:
        # Since the last interval's sweep.
        self.successes = 0
        self.failures = 0
        # Failures in a row, whatever the interval.
        self.streak = 0
        # When it was last ejected, if it is now (monotonic seconds).
        self.ejected_at: float | None = None
        # gRPC's ejection time multiplier: +1 per ejection, -1 per interval in service.
        self.multiplier = 0
        self.ejections = 0


class HealthFollower(Protocol):
    """What a subchannel needs of its health check (see :mod:`aiodiscovery._resilience.health`)."""

    #: The last answer (``SERVING``, ``NOT_SERVING``, ...) or ``PENDING``/``FAILED``.
    status: str

    @property
    def healthy(self) -> bool:
        """Whether the last answer allows new calls."""

    @property
    def pending(self) -> bool:
        """Whether the current connection has brought no answer yet."""

    def restart(self, sub: Subchannel) -> None:
        """A new connection: no answer yet on it."""

    async def watch(
        self, sub: Subchannel, channel: grpc.aio.Channel, changed: Callable[[Subchannel], None]
    ) -> None:
        """Follow the server's status on ``channel`` until cancelled."""


class CallKind(enum.Enum):
    """The four shapes of a gRPC method; the value names the ``grpc.aio.Channel`` method."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"


# (kind, method, request serializer, response deserializer, registered): one grpc multi-callable.
MethodKey = tuple[CallKind, str, Any, Any, bool | None]


class LoadFollower(Protocol):
    """What a subchannel runs on each READY connection for a load-aware policy: the server's
    out-of-band load reports (see :mod:`aiodiscovery._balancer.loadstream`)."""

    async def watch(self, sub: Subchannel, channel: grpc.aio.Channel) -> None:
        """Follow the reports of ``sub``'s server over ``channel`` until cancelled."""


# Sees each finished call of a subchannel: (subchannel, call).
Observer = Callable[["Subchannel", Any], None]


class Subchannel:
    """One gRPC channel to one address, with what the pickers and the pool need to know."""

    def __init__(self, address: str, metadata: object, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.metadata = metadata
        self.channel = channel
        self.state = _State.IDLE
        self.in_flight = 0
        self.picks = 0
        # Calls that ended with a status other than OK or CANCELLED (see Pool).
        self.failures = 0
        # The newest etcd mod revision of the keys naming this address (0: unknown).
        self.revision = 0
        # Fresh channels swapped in for this address (see renew()).
        self.reconnects = 0
        # The background work that follows this subchannel (its connectivity, or its drain):
        # cancelled and replaced whenever that work changes.
        self.scope = anyio.CancelScope()
        self._holds: set[str] = set()
        # What the pool does with each finished call (outlier counters, retry throttle), its
        # health check and the policy's load reports; the pool sets these before the
        # subchannel's background work first runs.
        self.observe: Observer | None = None
        self.tally: Tally | None = None
        self.health: HealthFollower | None = None
        self.load: LoadFollower | None = None
        # Made only while a drain waits: creating an event per idle-to-busy change is measurable
        # on a sequential caller's every call.
        self._idle: anyio.Event | None = None
        self._callables: dict[MethodKey, Any] = {}

    # -- eligibility ------------------------------------------------------------------------

    @property
    def eligible(self) -> bool:
        """Whether it may take new calls at all, whatever its connectivity."""
        return not self._holds

    @property
    def draining(self) -> bool:
        """Whether its endpoint was removed: it takes no new calls, its calls in flight finish."""
        return DRAINING in self._holds

    def hold(self, reason: str) -> bool:
        """Hold it out of the picks for ``reason``; True if that made it ineligible."""
        was_eligible = not self._holds
        self._holds.add(reason)
        return was_eligible

    def release(self, reason: str) -> bool:
        """Drop the hold ``reason``; True if that made it eligible again."""
        if reason not in self._holds:
            return False
        self._holds.discard(reason)
        return not self._holds

    # -- calls ------------------------------------------------------------------------------

    def start(self, key: MethodKey, request: Any, kwargs: dict[str, Any]) -> Any:
        """Start one attempt of the method ``key`` on this subchannel; count it until done.

        Every call the pool makes starts here, so this is the one place that sees attempts.
        """
        callable_ = self._callables.get(key)
        if callable_ is None:
            callable_ = self._bind(key)
        call = callable_(request, **kwargs)
        self.in_flight += 1
        self.picks += 1
        call.add_done_callback(self._call_done)
        return call

    def _bind(self, key: MethodKey) -> Any:
        kind, method, serializer, deserializer, registered = key
        callable_ = getattr(self.channel, kind.value)(
            method,
            request_serializer=serializer,
            response_deserializer=deserializer,
            _registered_method=registered,
        )
        self._callables[key] = callable_
        return callable_

    def _call_done(self, call: object) -> None:
        # The one place a finished call is seen: its outcome is known here.
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()
        observe = self.observe
        if observe is not None:
            observe(self, call)

    async def wait_idle(self) -> None:
        """Wait until no call is in flight."""
        while self.in_flight:
            self._idle = anyio.Event()
            await self._idle.wait()
        self._idle = None

    # -- connectivity -----------------------------------------------------------------------

    def renew(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        """Make new calls go through ``channel`` from now on; return the channel it replaces.

        grpcio has no call to cut a reconnect backoff short, but a fresh channel connects at
        once. Calls in flight stay on the old channel (and count here until done); the caller
        closes it once they are.
        """
        old, self.channel = self.channel, channel
        self._callables = {}
        self.reconnects += 1
        return old

    async def follow_connectivity(self, changed: Callable[[Subchannel], None]) -> None:
        """Keep :attr:`state` up to date, calling ``changed(self)`` on each change; forever.

        An IDLE channel is asked to connect at once: a new or recovered endpoint should take
        calls as soon as it can, not on the first call that happens to pick it. With a health
        check, each READY connection gets its own ``Watch`` stream, and the subchannel takes no
        calls until that stream says SERVING. Returns when the channel is closed (``changed``
        may itself be what drains it).
        """
        channel = self.channel
        health = self.health
        if health is not None:
            health.restart(self)
            changed(self)
        watching: anyio.CancelScope | None = None
        loads = self.load
        reporting: anyio.CancelScope | None = None
        state = channel.get_state(try_to_connect=True)
        async with anyio.create_task_group() as tg:
            while True:
                moved = state is not self.state
                self.state = state
                if health is not None:
                    if state is _State.READY and watching is None:
                        watching = anyio.CancelScope()
                        tg.start_soon(self._watch_health, health, channel, watching, changed)
                    elif state is not _State.READY and watching is not None:
                        # The stream died with the connection; the next one starts afresh.
                        watching.cancel()
                        watching = None
                        health.restart(self)
                if loads is not None:
                    # Reports come on a stream of the connection: one stream per connection.
                    if state is _State.READY and reporting is None:
                        reporting = anyio.CancelScope()
                        tg.start_soon(self._watch_load, loads, channel, reporting)
                    elif state is not _State.READY and reporting is not None:
                        reporting.cancel()
                        reporting = None
                if moved:
                    changed(self)
                if state is _State.IDLE:
                    channel.get_state(try_to_connect=True)
                try:
                    await channel.wait_for_state_change(state)
                except grpc.aio.UsageError:
                    tg.cancel_scope.cancel()
                    return
                state = channel.get_state(try_to_connect=False)

    async def _watch_health(
        self,
        health: HealthFollower,
        channel: grpc.aio.Channel,
        scope: anyio.CancelScope,
        changed: Callable[[Subchannel], None],
    ) -> None:
        with scope:
            await health.watch(self, channel, changed)

    async def _watch_load(
        self, loads: LoadFollower, channel: grpc.aio.Channel, scope: anyio.CancelScope
    ) -> None:
        with scope:
            await loads.watch(self, channel)
