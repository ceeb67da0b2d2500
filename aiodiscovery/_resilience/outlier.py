"""Outlier detection: endpoints whose calls fail more than their peers' take no calls for a while.

This is gRPC's ``outlier_detection`` (gRFC A50: success rate and failure percentage, checked
every ``interval``) plus Envoy's consecutive-failures ejection, which acts at once. An ejected
endpoint keeps its connection and its calls in flight; it is held out of the picks (see
:meth:`Subchannel.hold`) for ``base_ejection_time`` times the number of times it was ejected
(at most ``max(base_ejection_time, max_ejection_time)``), then comes back by itself. The
multiplier drops by one at each interval the endpoint spends in service, so an endpoint that
stays well is soon back to the base time.

The hot path is :meth:`OutlierDetector.record`: two counter increments per finished call.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import anyio
import grpc

from .._balancer.callstatus import code_value
from .._balancer.subchannel import Subchannel, Tally
from .._logsafe import Labelled, safe

__all__ = ["DEFAULT_FAILURE_CODES", "EJECTED", "OutlierDetection", "OutlierDetector", "Tally"]


# The hold reason of an ejected subchannel.
EJECTED = "ejected"

# The codes that say the server (or the way to it) is in trouble. Not the ones that say the
# request was wrong (INVALID_ARGUMENT, NOT_FOUND, ...), nor CANCELLED (usually the caller's own
# doing), nor RESOURCE_EXHAUSTED (often a quota of the caller's, or a message too big).
DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _check_percent(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"OutlierDetection.{name} must be an integer from 0 to 100, not {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"OutlierDetection.{name} must be an integer >= {minimum}, not {value!r}")


def _check_seconds(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"OutlierDetection.{name} must be a number of seconds > 0, not {value!r}")


@dataclass(frozen=True)
class OutlierDetection:
    """When to eject an endpoint, and for how long; ``resolve(..., outlier_detection=...)``.

    The defaults are those of gRPC (gRFC A50) and Envoy: every ``interval`` seconds, an endpoint
    whose success rate is more than ``success_rate_stdev_factor`` standard deviations below the
    mean is ejected (only with at least ``success_rate_minimum_hosts`` endpoints that each had
    ``success_rate_request_volume`` calls in the interval); an endpoint whose failure percentage
    is above ``failure_percentage_threshold`` is ejected (only with at least
    ``failure_percentage_minimum_hosts`` endpoints that each had
    ``failure_percentage_request_volume`` calls in the interval; off by default, as in Envoy:
    ``enforcing_failure_percentage=0``); and, at once, an endpoint whose last
    ``consecutive_failures`` calls all failed. ``enforcing_*`` is the chance, in percent, that a
    detected outlier is really ejected (0 turns that algorithm off).

    An ejection lasts ``base_ejection_time`` times the number of times the endpoint was ejected,
    at most ``max(base_ejection_time, max_ejection_time)``, checked at each interval. At most
    ``max_ejection_percent`` of the endpoints are ejected at once, but at least one may be
    (unless it is 0), as long as another endpoint still takes calls. A call counts as failed if
    its status is in ``failure_codes``; ``CANCELLED`` counts neither way, any other status as a
    success.
    """

    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    consecutive_failures: int = 5
    enforcing_consecutive_failures: int = 100
    success_rate_stdev_factor: float = 1.9
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    failure_codes: Collection[grpc.StatusCode] = field(default=DEFAULT_FAILURE_CODES)

    def __post_init__(self) -> None:
        for name in ("interval", "base_ejection_time", "max_ejection_time"):
            _check_seconds(name, getattr(self, name))
        for name in (
            "max_ejection_percent",
            "enforcing_consecutive_failures",
            "enforcing_success_rate",
            "enforcing_failure_percentage",
            "failure_percentage_threshold",
        ):
            _check_percent(name, getattr(self, name))
        _check_count("consecutive_failures", self.consecutive_failures, 1)
        for name in (
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
        ):
            _check_count(name, getattr(self, name), 0)
        factor = self.success_rate_stdev_factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor >= 0:
            raise ValueError(
                f"OutlierDetection.success_rate_stdev_factor must be a number >= 0, not {factor!r}"
            )
        codes = frozenset(self.failure_codes)
        if not all(isinstance(c, grpc.StatusCode) for c in codes) or grpc.StatusCode.OK in codes:
            raise ValueError(
                "OutlierDetection.failure_codes must be grpc.StatusCode values other than OK"
            )
        object.__setattr__(self, "failure_codes", codes)

    @property
    def longest_ejection(self) -> float:
        """The longest an ejection lasts, in seconds (as gRPC reads ``max_ejection_time``)."""
        return max(self.base_ejection_time, self.max_ejection_time)


class OutlierDetector:
    """Counts each subchannel's outcomes, ejects outliers and brings them back.

    ``subchannels()`` gives the subchannels in service (the endpoint list the percentages and
    minimum counts refer to); ``changed()`` tells the pool its usable list must be rebuilt.
    """

    def __init__(
        self,
        config: OutlierDetection,
        log: Labelled,
        subchannels: Callable[[], Iterable[Subchannel]],
        changed: Callable[[], None],
    ) -> None:
        self.config = config
        self.log = log
        self._subchannels = subchannels
        self._changed = changed
        self._failing = frozenset(code_value(c) for c in config.failure_codes)
        # The streak that ejects; 0 (never reached: a streak counts from 1) when that is off.
        self._streak_limit = (
            config.consecutive_failures if config.enforcing_consecutive_failures else 0
        )
        # Ejections so far, also of subchannels since closed.
        self.ejections = 0

    # -- the hot path -----------------------------------------------------------------------

    def record(self, sub: Subchannel, code: int) -> None:
        """Count the outcome ``code`` of one call on ``sub``."""
        tally = sub.tally
        if tally is None:
            return
        if code in self._failing:
            tally.failures += 1
            tally.streak += 1
            if tally.streak == self._streak_limit:
                self._streak_reached(sub, tally)
        else:
            tally.successes += 1
            tally.streak = 0

    # -- ejection and return ----------------------------------------------------------------

    def _streak_reached(self, sub: Subchannel, tally: Tally) -> None:
        tally.streak = 0
        if tally.ejected_at is not None:
            return
        subs = list(self._subchannels())
        if sub not in subs:
            return
        config = self.config
        if not _enforced(config.enforcing_consecutive_failures):
            return
        if self._may_eject(subs, _ejected_count(subs), sub):
            self._eject(sub, tally, time.monotonic(), f"{config.consecutive_failures} failures")
            self._changed()

    def _may_eject(self, subs: list[Subchannel], ejected: int, sub: Subchannel) -> bool:
        """Whether ``sub`` may be ejected now, ``ejected`` of ``subs`` being ejected already."""
        # As gRPC's cap: one ejection goes through whatever the percentage (unless it is 0).
        if ejected * 100 >= self.config.max_ejection_percent * len(subs):
            return False
        # But never the last endpoint that takes calls: a lone endpoint is no outlier, and
        # ejecting it would only turn its failures into "no endpoint" for the ejection time.
        return any(other.eligible for other in subs if other is not sub)

    def _eject(self, sub: Subchannel, tally: Tally, now: float, why: str) -> None:
        tally.ejected_at = now
        tally.multiplier += 1
        tally.ejections += 1
        self.ejections += 1
        sub.hold(EJECTED)
        self.log.warning(
            "endpoint %s ejected for %g s (%s)",
            safe(sub.address),
            self._ejection_time(tally),
            why,
        )

    def _ejection_time(self, tally: Tally) -> float:
        config = self.config
        return min(config.base_ejection_time * tally.multiplier, config.longest_ejection)

    # -- every interval ---------------------------------------------------------------------

    async def run(self) -> None:
        """Sweep every interval, forever (cancel to stop)."""
        while True:
            await anyio.sleep(self.config.interval)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """One interval's pass (gRFC A50): eject outliers, bring back those whose time is up."""
        subs = list(self._subchannels())
        tallies: list[tuple[Subchannel, Tally, int, int]] = []
        for sub in subs:
            tally = sub.tally
            if tally is None:
                continue
            tallies.append((sub, tally, tally.successes, tally.failures))
            tally.successes = tally.failures = 0
        before = _ejected_count(subs)
        ejected = before
        if self.config.enforcing_success_rate:
            ejected = self._success_rate(subs, tallies, ejected, now)
        if self.config.enforcing_failure_percentage:
            ejected = self._failure_percentage(subs, tallies, ejected, now)
        returned = False
        for sub, tally, _, _ in tallies:
            if tally.ejected_at is None:
                if tally.multiplier > 0:
                    tally.multiplier -= 1
            elif now >= tally.ejected_at + self._ejection_time(tally):
                tally.ejected_at = None
                tally.streak = 0
                sub.release(EJECTED)
                returned = True
                self.log.info("endpoint %s is back from ejection", safe(sub.address))
        if returned or ejected != before:
            self._changed()

    def _success_rate(
        self,
        subs: list[Subchannel],
        tallies: list[tuple[Subchannel, Tally, int, int]],
        ejected: int,
        now: float,
    ) -> int:
        config = self.config
        volume = config.success_rate_request_volume
        candidates = [t for t in tallies if t[2] + t[3] >= max(volume, 1)]
        if len(candidates) < config.success_rate_minimum_hosts or not candidates:
            return ejected
        rates = [ok / (ok + failed) for _, _, ok, failed in candidates]
        mean = sum(rates) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
        floor = mean - stdev * config.success_rate_stdev_factor
        for (sub, tally, _, _), rate in zip(candidates, rates, strict=True):
            if tally.ejected_at is not None or rate >= floor:
                continue
            if not self._may_eject(subs, ejected, sub):
                break
            if _enforced(config.enforcing_success_rate):
                self._eject(sub, tally, now, f"success rate {rate:.0%}, mean {mean:.0%}")
                ejected += 1
        return ejected

    def _failure_percentage(
        self,
        subs: list[Subchannel],
        tallies: list[tuple[Subchannel, Tally, int, int]],
        ejected: int,
        now: float,
    ) -> int:
        config = self.config
        volume = max(config.failure_percentage_request_volume, 1)
        # A50: only hosts with the request volume count towards the minimum, as for success rate.
        candidates = [t for t in tallies if t[2] + t[3] >= volume]
        if len(candidates) < config.failure_percentage_minimum_hosts:
            return ejected
        for sub, tally, ok, failed in candidates:
            total = ok + failed
            if tally.ejected_at is not None:
                continue
            percent = 100 * failed / total
            if percent <= config.failure_percentage_threshold:
                continue
            if not self._may_eject(subs, ejected, sub):
                break
            if _enforced(config.enforcing_failure_percentage):
                self._eject(sub, tally, now, f"{percent:.0f}% of {total} calls failed")
                ejected += 1
        return ejected


def _ejected_count(subs: Iterable[Subchannel]) -> int:
    return sum(1 for s in subs if s.tally is not None and s.tally.ejected_at is not None)


def _enforced(percentage: int) -> bool:
    """Whether a detected outlier is ejected: ``percentage`` chances in 100."""
    return percentage >= 100 or random.randrange(100) < percentage
