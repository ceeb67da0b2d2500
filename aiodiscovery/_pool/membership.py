"""Which subchannels the pool holds, and in which role: registered, kept, or draining.

:class:`Membership` follows each endpoint set: a new address gets a :class:`Subchannel`
(:mod:`aiodiscovery._selection.admission` decides which addresses may have one, and
:mod:`aiodiscovery._selection.selection` which of those this client holds: its subset, its
zone), an address registered again while its connection backs off gets a fresh one, and a
removed address drains (no new calls, its calls in flight finish, then its channel closes),
unless a mass removal makes :mod:`aiodiscovery._selection.protection` keep it for a while; an
address this client stops choosing (its subset moved, its zone is healthy again) drains too.
It runs every subchannel's background work in the pool's task group, and tells the pool
whenever what it may pick from has changed.

Each endpoint set is applied by its difference from the last one (the keys that changed), so a
change costs the same whatever the number of endpoints registered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import grpc
import grpc.aio

from .._balancer.subchannel import DRAINING, Subchannel
from .._codec.endpointset import EndpointSet
from .._logsafe import Labelled, safe
from .._selection.address import Address
from .._selection.admission import Admission, Wanted
from .._selection.protection import RemovalGuard
from .._selection.selection import Selection
from .options import PoolOptions

__all__ = ["Dial", "Membership"]

_State = grpc.ChannelConnectivity
# States that end a subchannel's first connection attempt.
_TRIED = frozenset({_State.READY, _State.TRANSIENT_FAILURE})

# Makes the grpc.aio channel for one address.
Dial = Callable[[Address], grpc.aio.Channel]


class Membership:
    """The pool's subchannels by address: :attr:`registered`, :attr:`retained`, draining."""

    def __init__(
        self,
        log: Labelled,
        target: str,
        dial: Dial,
        changed: Callable[[], None],
        options: PoolOptions,
    ) -> None:
        self.log = log
        # The subchannels of the registered addresses, in key order.
        self.registered: dict[str, Subchannel] = {}
        # Removed, but kept while READY by mass-removal protection.
        self.retained: dict[str, Subchannel] = {}
        self.admission = Admission(target, options.address_filter)
        self.selection = Selection(target, options.selection)
        mass_removal = options.mass_removal
        self.guard = None if mass_removal is None else RemovalGuard(mass_removal)
        # Where the background work runs; set by the pool before the first apply().
        self.task_group: anyio.abc.TaskGroup | None = None
        self._dial = dial
        self._changed = changed
        self._drain_timeout = options.drain_timeout
        self._draining: dict[str, Subchannel] = {}
        # Channels replaced by renew(), closing once their calls are done.
        self._retiring: set[grpc.aio.Channel] = set()
        # The timer that ends a mass-removal protection.
        self._protection = anyio.CancelScope()
        # Addresses whose subchannel has been through a connection attempt (READY or failed):
        # until then a subchannel gets the benefit of the doubt in a zone's health.
        self._tried: set[str] = set()
        # Registered addresses whose last connection attempt failed and that have not been READY
        # since: they do not count towards the subset's size, and are not taken as stand-ins
        # again (a reconnect attempt, or being let go, does not make them count).
        self._failing: set[str] = set()

    def held(self) -> list[Subchannel]:
        """Every subchannel: registered, kept by mass-removal protection, draining."""
        return [*self.registered.values(), *self.retained.values(), *self._draining.values()]

    async def close(self, grace: float | None) -> None:
        """Close every channel, giving calls in flight ``grace`` seconds."""
        channels = [s.channel for s in self.held()]
        channels += self._retiring
        self.registered.clear()
        self.retained.clear()
        self._draining.clear()
        self._retiring.clear()
        async with anyio.create_task_group() as tg:
            for channel in channels:
                tg.start_soon(channel.close, grace)

    # -- following the endpoint set ---------------------------------------------------------

    def apply(self, snapshot: EndpointSet) -> list[Subchannel]:
        """Bring the subchannels in line with ``snapshot``; those whose metadata changed."""
        admission = self.admission
        touched = admission.apply(snapshot)
        chosen = self.selection.update(admission.wanted, touched)
        return self._sync(chosen)

    def review(self) -> None:
        """Re-decide, from the endpoints' health, which stand in for unhealthy members of the
        subset and whether other zones take calls too."""
        changed = self.selection.review(self._healthy, self._serving)
        if changed:
            self._sync(changed)

    def rank(self, rank: int) -> None:
        """Place the subset by the ``rank`` etcd gave this client."""
        changed = self.selection.set_rank(rank)
        if changed:
            self._sync(changed)

    def _sync(self, addresses: set[str] | None) -> list[Subchannel]:
        """Hold or let go of ``addresses`` as admission and selection now say (None: all)."""
        admission, selection = self.admission, self.selection
        changed: list[Subchannel] = []
        removed: list[str] = []
        while True:
            wanted = admission.wanted
            if addresses is None:
                # In the order of the set (key order), then the ones to let go.
                consider = [*wanted, *(a for a in self.registered if a not in wanted)]
            else:
                # Sorted, so that new registrations of one batch are held in key order.
                consider = sorted(addresses, key=lambda a: _first_key(wanted.get(a), a))
            refused: set[str] = set()
            for addr in consider:
                want = wanted.get(addr)
                if want is not None and (not selection.active or addr in selection.chosen):
                    try:
                        sub = self._hold(addr, want)
                        if not _same(sub.metadata, want.metadata):
                            sub.metadata = want.metadata
                            changed.append(sub)
                    except Exception as exc:
                        # Nothing that comes from one endpoint may stop the pool.
                        admission.refuse(addr, want, f"its subchannel failed: {exc!r}")
                        refused.add(addr)
                elif addr in self.registered:
                    if want is None:
                        removed.append(addr)
                    else:
                        # Still registered, no longer chosen: no mass removal, just a drain.
                        self._drain_later(self.registered.pop(addr))
            if not refused:
                break
            # A refused address leaves the selection; another may take its place.
            addresses = selection.update(admission.wanted, refused)
            if addresses is not None:
                addresses -= refused
        if removed:
            self._remove(removed)
        self._check_recovery()
        return changed

    def _healthy(self, addr: str) -> bool:
        sub = self.registered.get(addr)
        if sub is None or not sub.eligible:
            return False
        return sub.state is _State.READY or addr not in self._tried

    def _serving(self, addr: str) -> bool:
        """Whether ``addr`` counts towards the subset's size: not known to be failing (one not
        held yet, or waiting for its first health answer, gets the benefit of the doubt)."""
        if addr in self._failing:
            # Also once let go and closed: it must work again before it counts.
            return False
        sub = self.registered.get(addr) or self._draining.get(addr)
        if sub is None:
            return True
        if sub.tally is not None and sub.tally.ejected_at is not None:
            return False
        if sub.health is not None and not sub.health.pending and not sub.health.healthy:
            return False
        return sub.state is not _State.TRANSIENT_FAILURE

    def _hold(self, addr: str, want: Wanted) -> Subchannel:
        """The subchannel for ``want``, made or brought back if need be."""
        sub = self.registered.get(addr)
        if sub is None and addr in self.retained:
            # Still followed: it only changes role.
            sub = self.retained.pop(addr)
            assert self.guard is not None
            self.guard.returned(addr)
            self.log.info("kept endpoint %s is registered again", safe(addr))
            self.registered[addr] = sub
        follow = sub is None
        if sub is None:
            sub = self._draining.pop(addr, None)
            if sub is not None:
                self.log.info("endpoint %s is back; it stops draining", safe(addr))
                sub.release(DRAINING)
            else:
                self.log.info("new endpoint %s", safe(addr))
                sub = Subchannel(addr, want.metadata, self._dial(want.address))
                sub.revision = want.revision
            self.registered[addr] = sub
        if want.revision > sub.revision:
            if sub.revision and sub.state is not _State.READY:
                # Registered again (a server back on its old address, most likely) while its
                # connection waits out gRPC's reconnect backoff: connect now instead.
                self._renew(sub, want.address)
                follow = True
            sub.revision = want.revision
        if follow:
            self._spawn(sub, self._monitor)
        return sub

    def _remove(self, addresses: list[str]) -> None:
        """Drain the subchannels of ``addresses`` or, in a mass removal, keep the READY ones."""
        guard = self.guard
        protecting = guard is not None and guard.protecting
        remaining = len(self.registered) - len(addresses)
        keep = guard is not None and guard.removed(addresses, remaining, time.monotonic())
        self._failing.difference_update(addresses)
        for addr in addresses:
            sub = self.registered.pop(addr)
            if keep and sub.state is _State.READY:
                self.retained[addr] = sub
            else:
                self._drain_later(sub)
        if not keep:
            return
        assert guard is not None and guard.until is not None
        kept = _some([a for a in addresses if a in self.retained])
        if protecting:
            self.log.warning("mass-removal protection also keeps %s", kept)
            return
        self.log.warning(
            "%d endpoints removed within %g s, %d left: mass-removal protection keeps "
            "the READY ones in use for up to %g s: %s",
            guard.recent,
            guard.config.window,
            remaining,
            guard.config.grace,
            kept,
        )
        assert self.task_group is not None
        self._protection = anyio.CancelScope()
        self.task_group.start_soon(self._expire_protection, self._protection, guard.config.grace)

    async def _expire_protection(self, scope: anyio.CancelScope, grace: float) -> None:
        with scope:
            await anyio.sleep(grace)
            self._end_protection("its grace expired")
            self._changed()

    def _check_recovery(self) -> None:
        guard = self.guard
        if guard is None or not guard.protecting:
            return
        if not self.retained:
            self._end_protection("no kept endpoint is left")
        elif guard.recovered(len(self.retained), len(self.registered)):
            self._end_protection("registrations are back")

    def _end_protection(self, reason: str) -> None:
        assert self.guard is not None
        self.guard.end()
        self._protection.cancel()
        self.log.warning(
            "mass-removal protection ends (%s); %d kept endpoints drain",
            reason,
            len(self.retained),
        )
        retained, self.retained = self.retained, {}
        for sub in retained.values():
            self._drain_later(sub)

    def _drain_later(self, sub: Subchannel) -> None:
        self._tried.discard(sub.address)
        sub.hold(DRAINING)
        self._draining[sub.address] = sub
        self.log.info(
            "endpoint %s removed; draining %d calls",
            safe(sub.address),
            sub.in_flight,
        )
        self._spawn(sub, self._drain)

    def _renew(self, sub: Subchannel, address: Address) -> None:
        self.log.info(
            "endpoint %s registered again while %s; connecting afresh",
            safe(sub.address),
            sub.state.name,
        )
        old = sub.renew(self._dial(address))
        self._retiring.add(old)
        assert self.task_group is not None
        self.task_group.start_soon(self._retire, old)

    async def _retire(self, channel: grpc.aio.Channel) -> None:
        # Its calls get as long as a removed endpoint's would; serve()'s exit closes it if
        # this is cancelled first.
        await channel.close(self._drain_timeout)
        self._retiring.discard(channel)

    def _spawn(self, sub: Subchannel, work: Callable[[Subchannel], Any]) -> None:
        """Run ``work(sub)`` in place of whatever background work ``sub`` had."""
        assert self.task_group is not None
        sub.scope.cancel()
        sub.scope = scope = anyio.CancelScope()
        self.task_group.start_soon(self._within, scope, work, sub)

    @staticmethod
    async def _within(
        scope: anyio.CancelScope, work: Callable[[Subchannel], Any], sub: Subchannel
    ) -> None:
        # The scope made for this task, not sub.scope when it begins: the role may have
        # changed again before then (a subset member let go and taken back in one change).
        with scope:
            await work(sub)

    async def _monitor(self, sub: Subchannel) -> None:
        await sub.follow_connectivity(self._subchannel_changed)

    def _subchannel_changed(self, sub: Subchannel) -> None:
        if sub.state in _TRIED and self.registered.get(sub.address) is sub:
            self._tried.add(sub.address)
        if sub.state is _State.READY:
            self._failing.discard(sub.address)
        elif sub.state is _State.TRANSIENT_FAILURE and sub.address in self.admission.wanted:
            # Also while let go: a stand-in taken back must not count until it works.
            self._failing.add(sub.address)
        if sub.state is not _State.READY and self.retained.get(sub.address) is sub:
            # Kept only while it works: a server that shuts down is let go at once.
            del self.retained[sub.address]
            self._drain_later(sub)
            self._check_recovery()
        self._changed()

    async def _drain(self, sub: Subchannel) -> None:
        with anyio.move_on_after(self._drain_timeout):
            await sub.wait_idle()
        if self._draining.get(sub.address) is not sub:
            # Held again (this task was cancelled before it began): no drain.
            return
        if sub.in_flight:
            self.log.warning(
                "closing removed endpoint %s with %d calls still in flight",
                safe(sub.address),
                sub.in_flight,
            )
        del self._draining[sub.address]
        with anyio.CancelScope(shield=True):
            await sub.channel.close(None)
        self.log.info("endpoint %s closed", safe(sub.address))


def _some(addresses: list[str], shown: int = 10) -> str:
    """A log line's worth of ``addresses``."""
    if not addresses:
        return "none"
    text = ", ".join(safe(a) for a in addresses[:shown])
    return text if len(addresses) <= shown else f"{text} and {len(addresses) - shown} more"


def _same(old: object, new: object) -> bool:
    """Whether two metadata values are equal; deep nesting can make ``==`` itself fail."""
    try:
        return old is new or bool(old == new)
    except Exception:
        return False


def _first_key(want: Wanted | None, addr: str) -> str:
    """What orders an address among those of one change: its first key (gone ones: address)."""
    return addr if want is None else want.keys[0]
