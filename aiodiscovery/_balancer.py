"""The pool behind a :class:`BalancedChannel`: subchannels that follow an endpoint set, and picks.

:class:`Balancer` keeps one :class:`Subchannel` per address of the latest
:class:`EndpointSet`, drains the removed ones, keeps the list of usable subchannels its picker
chooses from, and owns the queue of calls waiting for an endpoint. Everything here runs on the
event loop, in the channel's task or in synchronous call paths; nothing refers back to the
:class:`BalancedChannel` the user holds, so that one can be garbage collected.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
import grpc
import grpc.aio

from ._address import Address, AddressFilter
from ._admission import Admission, Wanted
from ._deferred import DeferredCall, WaitQueue
from ._logsafe import safe
from ._policies import Picker
from ._subchannel import DRAINING, MethodKey, Subchannel
from ._watcher import EndpointSet

__all__ = ["Balancer", "EndpointSource", "PoolStatistics", "SubchannelStatistics"]

logger = logging.getLogger("aiodiscovery")

_State = grpc.ChannelConnectivity
# Order of preference when no subchannel is READY: IDLE connects on demand, CONNECTING may make it.
_FALLBACK_ORDER = (_State.IDLE, _State.CONNECTING, _State.TRANSIENT_FAILURE)
# The channel's own state: the most hopeful one among its subchannels.
_HOPE_ORDER = (_State.READY, _State.CONNECTING, _State.IDLE, _State.TRANSIENT_FAILURE)


class EndpointSource(Protocol):
    """Where the pool's endpoint sets come from: a :class:`Watcher`, entered by the pool."""

    @property
    def snapshot(self) -> EndpointSet:
        """The current set."""

    def snapshots(self) -> AsyncIterator[EndpointSet]:
        """The current set, then each newer one."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: Any) -> Any: ...


# Makes the grpc.aio channel for one address.
Dial = Callable[[Address], grpc.aio.Channel]


@dataclass(frozen=True)
class SubchannelStatistics:
    """One subchannel's state and counters."""

    state: str
    in_flight: int
    picks: int
    draining: bool
    # Fresh connections made because the address was registered again while not READY.
    reconnects: int = 0


@dataclass(frozen=True)
class PoolStatistics:
    """A :class:`BalancedChannel`'s live state: subchannels by address, calls and picks."""

    target: str
    revision: int
    subchannels: dict[str, SubchannelStatistics]
    in_flight: int
    picks: int
    no_endpoint_failures: int
    # etcd key -> why its endpoint is not dialled (see resolve(address_filter=...)).
    skipped: dict[str, str] = field(default_factory=dict)
    # Endpoints skipped so far, one per key and address (each also logged once).
    skipped_endpoints: int = 0

    def by_state(self) -> dict[str, int]:
        """How many subchannels are in each connectivity state."""
        counts: dict[str, int] = {}
        for sub in self.subchannels.values():
            counts[sub.state] = counts.get(sub.state, 0) + 1
        return counts


class Balancer:
    """Subchannels in step with an endpoint set, the usable list, and calls waiting for it.

    The hot path reads :attr:`usable` and :attr:`picker` directly; everything else goes through
    methods. :meth:`serve` is the body of the channel's background task.
    """

    def __init__(
        self,
        target: str,
        picker: Picker[Subchannel],
        dial: Dial,
        *,
        drain_timeout: float,
        address_filter: AddressFilter | None = None,
    ) -> None:
        self.target = target
        self.picker = picker
        # The subchannels the picker was last given; empty means "defer the call".
        self.usable: list[Subchannel] = []
        self.state = _State.IDLE
        self.closed = False
        # Why the pool stopped following etcd, once its task has died without close().
        self.stop_reason: str | None = None
        self._dial = dial
        self._admission = Admission(target, address_filter)
        self._drain_timeout = drain_timeout
        self._state_changed = anyio.Event()
        self._subchannels: dict[str, Subchannel] = {}
        self._draining: dict[str, Subchannel] = {}
        # Channels replaced by renew(), closing once their calls are done.
        self._retiring: set[grpc.aio.Channel] = set()
        self._waiting = WaitQueue()
        self._revision = 0
        self._no_endpoint_failures = 0
        self._grace: float | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def serve(
        self, watcher: EndpointSource, started: anyio.Event, failure: list[BaseException]
    ) -> None:
        """Follow ``watcher`` until cancelled; set ``started`` once the first set is applied.

        An error before that goes into ``failure``; after it, the pool says why it stopped in
        the log, in :attr:`stop_reason` and in every call made from then on.
        """
        try:
            async with watcher, anyio.create_task_group() as tg:
                self._task_group = tg
                self.apply(watcher.snapshot)
                started.set()
                async for snapshot in watcher.snapshots():
                    self.apply(snapshot)
        except BaseException as exc:
            failure.append(exc)
            if not isinstance(exc, anyio.get_cancelled_exc_class()) and started.is_set():
                logger.exception("%s: the pool stopped following etcd", self.target)
                self.stop_reason = (
                    f"the pool of {self.target!r} stopped following etcd: {_cause(exc)!r}"
                )
            raise
        finally:
            started.set()
            with anyio.CancelScope(shield=True):
                await self._close_subchannels()
            # Nothing will ever make a subchannel usable again: say so, and free the waiters.
            self.set_state(_State.SHUTDOWN if self.closed else _State.TRANSIENT_FAILURE)
            self._waiting.end_all(
                grpc.StatusCode.UNAVAILABLE,
                self.stop_reason or f"the pool of {self.target!r} stopped following etcd",
            )

    def begin_close(self, grace: float | None) -> None:
        """Stop taking calls, end the waiting ones and cancel :meth:`serve`."""
        if self.closed:
            return
        self.closed = True
        self._grace = grace
        # From here every new call takes the slow path, which refuses it.
        self.usable = []
        self._waiting.end_all(grpc.StatusCode.CANCELLED, "channel closed")
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def _close_subchannels(self) -> None:
        channels = [s.channel for s in [*self._subchannels.values(), *self._draining.values()]]
        channels += self._retiring
        self._subchannels.clear()
        self._draining.clear()
        self._retiring.clear()
        self.usable = []
        async with anyio.create_task_group() as tg:
            for channel in channels:
                tg.start_soon(channel.close, self._grace)

    # -- following the endpoint set ---------------------------------------------------------

    def apply(self, snapshot: EndpointSet) -> None:
        """Bring the subchannels in line with ``snapshot``."""
        self._revision = snapshot.revision
        wanted = self._admission.select(snapshot)
        metadata_changed = False
        for addr, want in list(wanted.items()):
            try:
                metadata_changed |= self._hold(addr, want)
            except Exception as exc:
                # Nothing that comes from one endpoint may stop the pool.
                self._admission.refuse(addr, want, f"its subchannel failed: {exc!r}")
                del wanted[addr]
        for addr in [a for a in self._subchannels if a not in wanted]:
            sub = self._subchannels.pop(addr)
            sub.hold(DRAINING)
            self._draining[addr] = sub
            logger.info(
                "%s: endpoint %s removed; draining %d calls", self.target, safe(addr), sub.in_flight
            )
            self._spawn(sub, self._drain)
        self._rebuild(refresh=metadata_changed)

    def _hold(self, addr: str, want: Wanted) -> bool:
        """Hold a subchannel for ``want``; True if a usable one's metadata changed."""
        sub = self._subchannels.get(addr)
        follow = sub is None
        if sub is None:
            sub = self._draining.pop(addr, None)
            if sub is not None:
                logger.info("%s: endpoint %s is back; it stops draining", self.target, safe(addr))
                sub.release(DRAINING)
            else:
                logger.info("%s: new endpoint %s", self.target, safe(addr))
                sub = Subchannel(addr, want.metadata, self._dial(want.address))
                sub.revision = want.revision
            self._subchannels[addr] = sub
        if want.revision > sub.revision:
            if sub.revision and sub.state is not _State.READY:
                # Registered again (a server back on its old address, most likely) while its
                # connection waits out gRPC's reconnect backoff: connect now instead.
                self._renew(sub, want.address)
                follow = True
            sub.revision = want.revision
        if follow:
            self._spawn(sub, self._monitor)
        if _same(sub.metadata, want.metadata):
            return False
        sub.metadata = want.metadata
        # Pickers read metadata (the weight) only in update(); the list itself may not change,
        # so a usable subchannel's new metadata must force one.
        return sub in self.usable

    def _renew(self, sub: Subchannel, address: Address) -> None:
        logger.info(
            "%s: endpoint %s registered again while %s; connecting afresh",
            self.target,
            safe(sub.address),
            sub.state.name,
        )
        old = sub.renew(self._dial(address))
        self._retiring.add(old)
        assert self._task_group is not None
        self._task_group.start_soon(self._retire, old)

    async def _retire(self, channel: grpc.aio.Channel) -> None:
        # Its calls get as long as a removed endpoint's would; serve()'s exit closes it if
        # this is cancelled first.
        await channel.close(self._drain_timeout)
        self._retiring.discard(channel)

    def _spawn(self, sub: Subchannel, work: Callable[[Subchannel], Any]) -> None:
        """Run ``work(sub)`` in place of whatever background work ``sub`` had."""
        assert self._task_group is not None
        sub.scope.cancel()
        sub.scope = anyio.CancelScope()
        self._task_group.start_soon(work, sub)

    async def _monitor(self, sub: Subchannel) -> None:
        with sub.scope:
            await sub.follow_connectivity(self._subchannel_changed)

    def _subchannel_changed(self, _sub: Subchannel) -> None:
        self._rebuild()

    async def _drain(self, sub: Subchannel) -> None:
        with sub.scope:
            with anyio.move_on_after(self._drain_timeout):
                await sub.wait_idle()
            if sub.in_flight:
                logger.warning(
                    "%s: closing removed endpoint %s with %d calls still in flight",
                    self.target,
                    safe(sub.address),
                    sub.in_flight,
                )
            del self._draining[sub.address]
            with anyio.CancelScope(shield=True):
                await sub.channel.close(None)
            logger.info("%s: endpoint %s closed", self.target, safe(sub.address))

    # -- the usable list and the channel's state --------------------------------------------

    def _rebuild(self, *, refresh: bool = False) -> None:
        """Recompute the usable list and the aggregate state after any change.

        ``refresh`` hands the picker the usable list even if it is the same one.
        """
        if self.closed:
            return
        subs = [s for s in self._subchannels.values() if s.eligible]
        usable = [s for s in subs if s.state is _State.READY]
        if not usable:
            for state in _FALLBACK_ORDER:
                usable = [s for s in subs if s.state is state]
                if usable:
                    break
        if usable != self.usable or (refresh and usable):
            if usable:
                # Before publishing the list: a picker that fails must not be picked from.
                self.picker.update(usable)
            self.usable = usable
            if usable:
                self._launch_waiting()
        states = {s.state for s in subs}
        for state in _HOPE_ORDER:
            if state in states:
                break
        else:
            state = _State.TRANSIENT_FAILURE
        self.set_state(state)

    def set_state(self, state: grpc.ChannelConnectivity) -> None:
        """Publish the channel's connectivity ``state``, waking :meth:`wait_for_state_change`."""
        if state is not self.state:
            self.state = state
            changed, self._state_changed = self._state_changed, anyio.Event()
            changed.set()

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until :attr:`state` differs from ``last_observed_state``."""
        while self.state is last_observed_state:
            await self._state_changed.wait()

    def connect(self) -> None:
        """Ask every IDLE subchannel to connect."""
        for sub in self._subchannels.values():
            if sub.state is _State.IDLE:
                sub.channel.get_state(try_to_connect=True)

    # -- calls without a usable subchannel --------------------------------------------------

    def defer(
        self, class_: type[DeferredCall], key: MethodKey, request: Any, kwargs: dict[str, Any]
    ) -> DeferredCall:
        """A call made while no subchannel is usable: failed at once, or queued to wait."""
        if self.closed:
            raise grpc.aio.UsageError("Channel is closed.")
        call = class_(self.target, request, kwargs)
        if self.stop_reason is not None:
            call.end(grpc.StatusCode.UNAVAILABLE, self.stop_reason)
        elif not kwargs.get("wait_for_ready"):
            self._no_endpoint_failures += 1
            call.end(grpc.StatusCode.UNAVAILABLE, self._no_endpoint())
        else:
            self._waiting.add(call, key)
        return call

    def _no_endpoint(self) -> str:
        skipped = len(self._admission.skipped)
        if not skipped:
            return f"no endpoint registered for {self.target!r}"
        return (
            f"no endpoint of {self.target!r} can be dialled: {skipped} registered, skipped "
            "(see the log and statistics().skipped)"
        )

    def _launch_waiting(self) -> None:
        # One at a time, picking before dequeuing: if a picker fails, the calls not yet started
        # stay queued and serve()'s exit fails them, instead of their being lost.
        waiting = self._waiting
        while len(waiting):
            sub = self.picker.pick()
            call, key = waiting.pop_oldest()
            call.launch(functools.partial(sub.start, key))

    # -- introspection ----------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """Subchannels by address (state, calls in flight, picks), totals and failures."""
        subs = {
            a: SubchannelStatistics(s.state.name, s.in_flight, s.picks, s.draining, s.reconnects)
            for a, s in [*self._subchannels.items(), *self._draining.items()]
        }
        return PoolStatistics(
            target=self.target,
            revision=self._revision,
            subchannels=subs,
            in_flight=sum(s.in_flight for s in subs.values()),
            picks=sum(s.picks for s in subs.values()),
            no_endpoint_failures=self._no_endpoint_failures,
            skipped=dict(self._admission.skipped),
            skipped_endpoints=self._admission.skipped_total,
        )


def _same(old: object, new: object) -> bool:
    """Whether two metadata values are equal; deep nesting can make ``==`` itself fail."""
    try:
        return old is new or bool(old == new)
    except Exception:
        return False


def _cause(exc: BaseException) -> BaseException:
    """The one error inside nested single-error groups, for a readable message."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
