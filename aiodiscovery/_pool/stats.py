"""What a pool reports about itself: statistics snapshots of the pool and its subchannels."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._balancer.subchannel import Subchannel
from .._selection.selection import SelectionStatistics

__all__ = ["PoolStatistics", "SubchannelStatistics", "subchannel_statistics"]


@dataclass(frozen=True, slots=True)
class SubchannelStatistics:
    """One subchannel's state and counters."""

    state: str
    in_flight: int
    picks: int
    draining: bool
    #: Fresh connections made because the address was registered again while not READY.
    reconnects: int = 0
    #: Removed from the registry, but kept in use by mass-removal protection.
    retained: bool = False
    #: With a health check: SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN (what the server
    #: said), PENDING (no answer yet on this connection), FAILED (the Watch call failed; opened
    #: again after a backoff) or UNIMPLEMENTED (no health service: healthy). None without.
    health: str | None = None
    #: Held out of the picks by outlier detection now, and how many times so far.
    ejected: bool = False
    ejections: int = 0
    #: Calls that ended with a status other than OK or CANCELLED.
    failures: int = 0
    # Its weight in the policy's picks now (weighted policies; None for the others).
    weight: float | None = None


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A :class:`BalancedChannel`'s live state: subchannels by address, calls and picks."""

    target: str
    revision: int
    subchannels: dict[str, SubchannelStatistics]
    in_flight: int
    picks: int
    no_endpoint_failures: int
    #: etcd key -> why its endpoint is not dialled (see resolve(address_filter=...)).
    skipped: dict[str, str] = field(default_factory=dict)
    #: Endpoints skipped so far, one per key and address (each also logged once).
    skipped_endpoints: int = 0
    #: Seconds mass-removal protection may still keep the retained subchannels (None: off).
    retained_for: float | None = None
    #: How many times mass-removal protection began.
    mass_removals: int = 0
    #: Which endpoints the pool chose to hold: subset, zone, spilling over (see resolve()).
    selection: SelectionStatistics | None = None
    #: Outlier detection: subchannels ejected now, and ejections so far (of any subchannel).
    ejected: int = 0
    ejections: int = 0
    #: Attempts after the first, made by a retryPolicy; retries refused by retryThrottling;
    #: calls that never left sent again on another endpoint (see resolve()).
    retries: int = 0
    retries_throttled: int = 0
    transparent_retries: int = 0
    #: The retry throttle's tokens (None without retryThrottling); retries stop at half.
    retry_tokens: float | None = None

    def by_state(self) -> dict[str, int]:
        """How many subchannels are in each connectivity state."""
        counts: dict[str, int] = {}
        for sub in self.subchannels.values():
            counts[sub.state] = counts.get(sub.state, 0) + 1
        return counts

    def by_health(self) -> dict[str, int]:
        """How many subchannels are in each health state (empty without a health check)."""
        counts: dict[str, int] = {}
        for sub in self.subchannels.values():
            if sub.health is not None:
                counts[sub.health] = counts.get(sub.health, 0) + 1
        return counts


def subchannel_statistics(
    sub: Subchannel, retained: bool, weight: float | None = None
) -> SubchannelStatistics:
    """A snapshot of ``sub``; ``retained`` if mass-removal protection keeps it; ``weight`` is
    its weight in the policy's picks."""
    return SubchannelStatistics(
        sub.state.name,
        sub.in_flight,
        sub.picks,
        sub.draining,
        sub.reconnects,
        retained,
        health=None if sub.health is None else sub.health.status,
        ejected=sub.tally is not None and sub.tally.ejected_at is not None,
        ejections=0 if sub.tally is None else sub.tally.ejections,
        failures=sub.failures,
        weight=weight,
    )
