"""The pool behind a :class:`BalancedChannel`: what each call may be sent to, and picks.

:class:`Pool` runs the pool's background task, which keeps a :class:`Membership` in step
with the endpoint sets; it keeps the list of usable subchannels its picker chooses from (the
eligible registered ones, READY first, and any kept by mass-removal protection), the channel's
connectivity state, and owns the queue of calls waiting for an endpoint. Everything here runs
on the event loop, in the channel's task or in synchronous call paths; nothing refers back to the
:class:`BalancedChannel` the user holds, so that one can be garbage collected.

It also wires in what keeps calls away from failing servers: each new subchannel gets the pool's
health check (:mod:`aiodiscovery._resilience.health`) and its outlier counters
(:mod:`aiodiscovery._resilience.outlier`), and :meth:`Pool.attempt` starts the attempts of
calls that may be retried (:mod:`.retrying`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc
import grpc
import grpc.aio

from .._balancer.callstatus import CANCELLED, OK, status_code
from .._balancer.deferred import DeferredCall, WaitQueue
from .._balancer.loadstream import LoadStream
from .._balancer.policies import Picker
from .._balancer.subchannel import MethodKey, Observer, Subchannel, Tally
from .._codec.endpointset import EndpointSet
from .._etcd.client import EtcdClient
from .._exceptions import EtcdError
from .._logsafe import Labelled
from .._naming.ranks import RankClaim
from .._resilience.health import UNHEALTHY, HealthCheck, SubchannelHealth
from .._resilience.outlier import OutlierDetector
from .._resilience.retrypolicy import RetryThrottle
from .membership import Membership
from .options import PoolOptions
from .serviceconfig import channel_rules
from .stats import PoolStatistics, subchannel_statistics

__all__ = ["EndpointSource", "Pool"]

logger = logging.getLogger("aiodiscovery.pool")

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


class Pool:
    """Subchannels in step with an endpoint set, the usable list, and calls waiting for it.

    The hot path reads :attr:`usable` and :attr:`picker` directly; everything else goes through
    methods. :meth:`serve` is the body of the channel's background task.
    """

    def __init__(self, target: str, options: PoolOptions, client: EtcdClient | None = None) -> None:
        self.target = target
        # Every line the pool and its parts log starts with the target it serves.
        self.log = Labelled(logger, target)
        # The service config's balancer and health check, where it names them.
        rules = channel_rules(options.options)
        self.picker: Picker[Subchannel] = options.picker(rules.policy)
        # The subchannels the picker was last given; empty means "defer the call".
        self.usable: list[Subchannel] = []
        self.state = _State.IDLE
        # As a grpc channel: no connection until a call, get_state(True) or channel_ready()
        # (or at once with eager), and none again after the idle timeout without calls.
        self.idle = True
        self._eager = options.eager
        self._idle_timeout = options.idle_timeout()
        self._woken = anyio.Event()
        self.closed = False
        # Why the pool stopped following etcd, once its task has died without close().
        self.stop_reason: str | None = None
        self.retry, subchannel_options = options.retry(self.log)
        self._members = Membership(
            self.log,
            target,
            functools.partial(options.dial, options=subchannel_options),
            self._rebuild,
            options,
        )
        self._state_changed = anyio.Event()
        self._waiting = WaitQueue()
        self._revision = 0
        self._no_endpoint_failures = 0
        self._grace: float | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        service = options.health_service(rules.health_check)
        self._health = None if service is None else HealthCheck(self.log, service)
        detection = options.outlier_detection
        self._detector = (
            None
            if detection is None
            else OutlierDetector(detection, self.log, self._in_service, self._rebuild)
        )
        # Counted by the retrying calls.
        self.retries = 0
        self.retries_throttled = 0
        self.transparent_retries = 0
        self._observe = _observer(self._detector, self.retry.throttle)
        # The servers' out-of-band load reports, for a policy that balances on them.
        listener = self.picker.load_listener()
        self._loads = None if listener is None else LoadStream(self.log, listener)
        # Subsetting without an integer client_id: a dense rank from etcd places the subset.
        selection = self._members.selection
        self._ranks = (
            RankClaim(client, target, str(selection.client_id))
            if client is not None and selection.config.wants_rank
            else None
        )

    # -- life cycle -------------------------------------------------------------------------

    async def serve(
        self,
        watcher: EndpointSource,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow ``watcher`` until cancelled; report ``started`` once the first set is applied.

        An error before that is the starter's (``TaskGroup.start`` raises it); after it, the
        pool says why it stopped in the log, in :attr:`stop_reason` and in every call made from
        then on, and returns: nothing else could report it.
        """
        started = False
        try:
            async with watcher, anyio.create_task_group() as tg:
                self._task_group = self._members.task_group = tg
                if self._detector is not None:
                    tg.start_soon(self._detector.run)
                if self._ranks is not None:
                    await self._first_rank(self._ranks)
                    tg.start_soon(self._ranks.run, self._ranked)
                if self._idle_timeout is not None:
                    tg.start_soon(self._idle_timer, self._idle_timeout)
                if self._eager:
                    self.wake()
                self.apply(watcher.snapshot)
                task_status.started()
                started = True
                async for snapshot in watcher.snapshots():
                    self.apply(snapshot)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            if not started:
                raise
            self.log.exception("the pool stopped following etcd")
            self.stop_reason = (
                f"the pool of {self.target!r} stopped following etcd: {_cause(exc)!r}"
            )
        finally:
            self.usable = []
            with anyio.CancelScope(shield=True):
                await self._members.close(self._grace)
            # Nothing will ever make a subchannel usable again: say so, and free the waiters.
            self.set_state(_State.SHUTDOWN if self.closed else _State.TRANSIENT_FAILURE)
            self._waiting.end_all(
                grpc.StatusCode.UNAVAILABLE,
                self.stop_reason or f"the pool of {self.target!r} stopped following etcd",
            )

    async def _first_rank(self, ranks: RankClaim) -> None:
        """Take a rank before holding any endpoint, so that a client does not move its subset
        right after it starts; without an answer in time it starts at its id's hash instead."""
        with anyio.move_on_after(ranks.client.timeout):
            try:
                self._members.rank(await ranks.claim())
            except EtcdError as exc:
                self.log.warning("no subsetting rank from etcd yet (%s); placed by hash", exc)

    def _ranked(self, rank: int) -> None:
        self._members.rank(rank)
        self._rebuild()

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

    # -- following the endpoint set ---------------------------------------------------------

    def apply(self, snapshot: EndpointSet) -> None:
        """Bring the subchannels in line with ``snapshot``."""
        self._revision = snapshot.revision
        changed = self._members.apply(snapshot)
        # Pickers read metadata (the weight) only in update(); the list itself may not change,
        # so a usable subchannel's new metadata must force one.
        self._rebuild(refresh=any(sub in self.usable for sub in changed))

    def _adopt(self) -> None:
        """Give each new subchannel the pool's health check and outcome counters.

        Runs on every rebuild, which follows whatever made a subchannel, before the subchannel's
        background work (which runs the health check) starts in the task group.
        """
        for sub in self._members.registered.values():
            if sub.observe is not None or sub.health is not None:
                continue
            sub.observe = self._observe
            sub.load = self._loads
            if self._detector is not None:
                sub.tally = Tally()
            if self._health is not None:
                sub.health = SubchannelHealth(self._health)
                sub.hold(UNHEALTHY)

    def _in_service(self) -> list[Subchannel]:
        """The subchannels outlier detection compares: registered and kept ones."""
        members = self._members
        return [*members.registered.values(), *members.retained.values()]

    def _pending(self) -> bool:
        """Whether a subchannel may soon be usable: its first health answer is on its way."""
        return self._health is not None and any(
            s.health is not None and s.health.pending and s.state is not _State.TRANSIENT_FAILURE
            for s in self._members.registered.values()
        )

    # -- the usable list and the channel's state --------------------------------------------

    def _rebuild(self, *, refresh: bool = False) -> None:
        """Recompute the usable list and the aggregate state after any change.

        ``refresh`` hands the picker the usable list even if it is the same one.
        """
        if self.closed:
            return
        members = self._members
        # A zone's health may have changed: other zones may have to take calls, or stop.
        members.review()
        self._adopt()
        subs = [s for s in members.registered.values() if s.eligible]
        # Kept subchannels are READY; after the registered ones, so pick_first prefers those.
        kept = [s for s in members.retained.values() if s.eligible]
        usable = [s for s in subs if s.state is _State.READY] + kept
        if not usable:
            for state in _FALLBACK_ORDER:
                usable = [s for s in subs if s.state is state]
                if usable:
                    break
        if self.idle:
            # Every call takes the slow path, which wakes the pool first (see defer()).
            usable = []
        if usable != self.usable or (refresh and usable):
            if usable:
                # Before publishing the list: a picker that fails must not be picked from.
                self.picker.update(usable)
            self.usable = usable
            if usable:
                self._launch_waiting()
        pending = not usable and self._pending()
        if not usable and not pending and len(self._waiting):
            self._waiting.end_impatient(grpc.StatusCode.UNAVAILABLE, self._no_endpoint())
        states = {s.state for s in subs} | {s.state for s in kept}
        for state in _HOPE_ORDER:
            if state in states:
                break
        else:
            # Held out only until their first health answer: on their way, as grpc says.
            state = _State.CONNECTING if pending else _State.TRANSIENT_FAILURE
        # An IDLE grpc channel has not even resolved its target: IDLE, whatever it would find.
        self.set_state(_State.IDLE if self.idle else state)

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

    # -- IDLE and awake ---------------------------------------------------------------------

    def wake(self) -> None:
        """Leave IDLE: connect every subchannel (a call, ``get_state(True)``, ``eager``)."""
        if not self.idle or self.closed:
            return
        self.idle = False
        self._woken.set()
        self._members.wake()
        self._rebuild()

    def _quiet(self) -> int | None:
        """The calls started so far, or None while a call is in flight or waiting."""
        held = self._members.held()
        if len(self._waiting) or any(s.in_flight for s in held):
            return None
        return sum(s.picks for s in held)

    async def _idle_timer(self, timeout: float) -> None:
        """Go IDLE after ``timeout`` s without calls, like grpc's client idle timeout."""
        # Looked at four times per timeout: the channel goes IDLE between timeout and
        # 1.25 x timeout after its last call ended, at no cost to the calls themselves.
        step = max(timeout / 4, 0.005)
        while True:
            await self._woken.wait()
            last: int | None = None
            since = time.monotonic()
            while not self.idle:
                await anyio.sleep(step)
                now, calls = time.monotonic(), self._quiet()
                if calls is None or calls != last:
                    last, since = calls, now
                elif now - since >= timeout and self._rest(timeout):
                    break

    def _rest(self, timeout: float) -> bool:
        """Go IDLE, dropping every connection; False if the pool must stay connected."""
        guard = self._members.guard
        if guard is not None and guard.protecting:
            # Its kept endpoints live only as long as their connections.
            return False
        self.idle = True
        self._woken = anyio.Event()
        self.log.info("no call for %g s: IDLE, connections closed", timeout)
        self._members.rest()
        self._rebuild()
        return True

    # -- calls without a usable subchannel --------------------------------------------------

    def defer(
        self, class_: type[DeferredCall], key: MethodKey, request: Any, kwargs: dict[str, Any]
    ) -> Any:
        """A call made while IDLE or with no usable subchannel: wakes the pool, and goes to a
        subchannel if that made one usable; else failed at once, or queued to wait."""
        if self.closed:
            raise grpc.aio.UsageError("Channel is closed.")
        if self.idle:
            self.wake()
            if self.usable:
                return self.picker.pick().start(key, request, kwargs)
        call = class_(self.target, request, kwargs)
        if self.stop_reason is not None:
            call.end(grpc.StatusCode.UNAVAILABLE, self.stop_reason)
        elif not kwargs.get("wait_for_ready") and not self._pending():
            self._no_endpoint_failures += 1
            call.end(grpc.StatusCode.UNAVAILABLE, self._no_endpoint())
        else:
            # Without wait_for_ready only while a health answer is on its way: _rebuild() ends
            # it as soon as none is.
            self._waiting.add(call, key)
        return call

    def _no_endpoint(self) -> str:
        held = [s for s in self._in_service() if not s.eligible]
        if held:
            return f"no usable endpoint of {self.target!r}: {why_held(held)}"
        skipped = len(self._members.admission.skipped)
        if not skipped:
            return f"no endpoint registered for {self.target!r}"
        return (
            f"no endpoint of {self.target!r} can be dialled: {skipped} registered, skipped "
            "(see the log and statistics().skipped)"
        )

    # -- attempts of calls that may be retried ----------------------------------------------

    def attempt(
        self,
        deferred: type[DeferredCall],
        key: MethodKey,
        request: Any,
        kwargs: dict[str, Any],
        tried: Sequence[Subchannel] = (),
    ) -> tuple[Subchannel | None, Any]:
        """Start one attempt of a call, preferring a subchannel not in ``tried``.

        Returns the subchannel (None if the attempt had to be deferred) and the attempt.
        """
        # Woken here, not in defer(): an attempt that finds a subchannel must say which, so
        # that its retry prefers another one.
        self.wake()
        if self.usable:
            sub = self._pick(tried)
            return sub, sub.start(key, request, kwargs)
        return None, self.defer(deferred, key, request, kwargs)

    def other_ready(self, tried: Sequence[Subchannel]) -> Subchannel | None:
        """A usable READY subchannel not in ``tried``, or None."""
        if not self.usable:
            return None
        sub = self._pick(tried)
        return None if sub in tried or sub.state is not _State.READY else sub

    def _pick(self, tried: Sequence[Subchannel]) -> Subchannel:
        picker = self.picker
        sub = picker.pick()
        if not tried:
            return sub
        # The policy's choice if it names one not tried within a round, else any not tried.
        for _ in range(len(self.usable) - 1):
            if sub not in tried:
                return sub
            sub = picker.pick()
        if sub in tried:
            for other in self.usable:
                if other not in tried:
                    return other
        return sub

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
        members = self._members
        retained = members.retained
        weight = self.picker.weight
        subs = {
            s.address: subchannel_statistics(s, s.address in retained, weight(s))
            for s in members.held()
        }
        guard = members.guard
        until = None if guard is None else guard.until
        throttle = self.retry.throttle
        return PoolStatistics(
            target=self.target,
            revision=self._revision,
            subchannels=subs,
            in_flight=sum(s.in_flight for s in subs.values()),
            picks=sum(s.picks for s in subs.values()),
            no_endpoint_failures=self._no_endpoint_failures,
            skipped=dict(members.admission.skipped),
            skipped_endpoints=members.admission.skipped_total,
            retained_for=None if until is None else max(0.0, until - time.monotonic()),
            mass_removals=0 if guard is None else guard.engagements,
            selection=members.selection.statistics(len(members.admission.wanted)),
            ejected=sum(s.ejected for s in subs.values() if not s.draining),
            ejections=0 if self._detector is None else self._detector.ejections,
            retries=self.retries,
            retries_throttled=self.retries_throttled,
            transparent_retries=self.transparent_retries,
            retry_tokens=None if throttle is None else throttle.tokens,
        )


def _observer(detector: OutlierDetector | None, throttle: RetryThrottle | None) -> Observer:
    """What each finished call's outcome feeds: the endpoint's failure count (statistics and
    metrics), the outlier counters, the retry throttle."""

    def observe(sub: Subchannel, call: object) -> None:
        code = status_code(call)
        if code is None or code == CANCELLED:
            # A cancelled call says nothing about the server (usually the caller gave up).
            return
        if code != OK:
            sub.failures += 1
        elif throttle is not None:
            throttle.success()
        if detector is not None:
            detector.record(sub, code)

    return observe


def _cause(exc: BaseException) -> BaseException:
    """The one error inside nested single-error groups, for a readable message."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def why_held(held: Sequence[Subchannel]) -> str:
    """Why these subchannels take no calls, for an error message: counts by reason."""
    reasons: dict[str, int] = {}
    for sub in held:
        if sub.tally is not None and sub.tally.ejected_at is not None:
            reason = "ejected (outlier detection)"
        elif sub.health is not None and not sub.health.healthy:
            reason = _HEALTH_REASONS.get(sub.health.status, sub.health.status)
            reason += " (health check)"
        else:
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return f"{len(held)} held out"
    return ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))


_HEALTH_REASONS = {"PENDING": "not answered yet", "FAILED": "health watch failing"}
