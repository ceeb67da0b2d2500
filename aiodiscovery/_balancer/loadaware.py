"""Load-aware policies: weighted round robin on the servers' load reports, and least request.

:class:`WeightedRoundRobin` follows gRFC A58 (``weighted_round_robin``): each server's weight is
``qps / (utilization + eps / qps * error_utilization_penalty)`` from the ORCA load reports it sends
(gRFC A51) on an out-of-band stream to each server (``oob_reporting_period`` apart; see
:class:`~aiodiscovery.LoadReporter` for the server side), used only once it has
reported for ``blackout_period`` and dropped when no report came for ``weight_expiration_period``;
a server without a usable weight gets the mean of the others, and with fewer than two weights the
policy is round robin. Utilization is ``application_utilization``, else the largest of the metrics
named in ``metric_names_for_computing_utilization`` (gRFC A114), else ``cpu_utilization``. Picks
follow an earliest-deadline-first schedule rebuilt every ``weight_update_period``. With
``slow_start`` (gRFC A100, a draft) a server that has just become usable ramps up from
``min_weight_percent`` of its weight over ``window`` seconds.

:class:`LeastRequest` follows gRFC A48 (``least_request``): of ``choice_count`` random servers,
the one with the fewest calls in flight (distinct draws, where A48 draws with replacement).

Both are factories: ``resolve(..., policy=WeightedRoundRobin(blackout_period=2))``; the names
``"weighted_round_robin"`` and ``"least_request"`` give the defaults. Pickers never await: the
weights are recomputed lazily by the first pick after each period, and reports arrive on the
streams the pool runs for the policy (:mod:`.loadstream`): nothing is added to a call.

A58 reads per-call reports by default; grpcio cannot (its C core keeps the
``endpoint-load-metrics-bin`` trailer from the application), so here the out-of-band stream,
A58's ``enable_oob_load_report`` mode, is the only mode.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from .._orcaproto import LoadReport
from .policies import LoadListener, P2CPicker, Picker, S

__all__ = [
    "LeastRequest",
    "LeastRequestPicker",
    "SlowStart",
    "WeightedRoundRobin",
    "WeightedRoundRobinPicker",
    "report_utilization",
]

_READY = grpc.ChannelConnectivity.READY
# A58: a weight_update_period under 100 ms is raised to it.
_MIN_UPDATE_PERIOD = 0.1
# A48: choice counts above 10 are treated as 10.
_MAX_CHOICES = 10
# Bounds on one server's share against the others': a server reporting a freak qps (or a near-zero
# utilization) must not take all the traffic, nor may one be starved by a rounding to nothing.
_MAX_RATIO = 10.0
_MIN_RATIO = 0.01
# A114: the fields a metric name may designate (and named_metrics.<key>).
_METRIC_FIELDS = ("application_utilization", "cpu_utilization", "mem_utilization")


def _seconds(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SlowStart:
    """Ramp a server that has just become usable up to its full weight (gRFC A100).

    For ``window`` seconds after it becomes READY its weight is scaled by
    ``max(min_weight_percent / 100, (max(t, 1) / window) ** (1 / aggression))``, ``t`` being the
    seconds since then: linear with ``aggression=1``, faster early with a larger one.
    """

    window: float
    aggression: float = 1.0
    min_weight_percent: float = 10.0

    def __post_init__(self) -> None:
        if _seconds("window", self.window) <= 0:
            raise ValueError("window must be > 0 seconds")
        if not isinstance(self.aggression, int | float) or not self.aggression > 0:
            raise ValueError(f"aggression must be > 0, not {self.aggression!r}")
        if not isinstance(self.min_weight_percent, int | float) or not (
            0 <= self.min_weight_percent <= 100
        ):
            raise ValueError(
                f"min_weight_percent must be within 0..100, not {self.min_weight_percent!r}"
            )

    def scale(self, since_ready: float) -> float:
        """The factor applied to a weight ``since_ready`` seconds after the server became READY."""
        if since_ready >= self.window:
            return 1.0
        factor = max(since_ready, 1.0) / self.window
        ramp: float = factor ** (1.0 / self.aggression)
        return max(self.min_weight_percent / 100.0, ramp)


def _metric(report: LoadReport, name: str) -> float:
    if name.startswith("named_metrics."):
        return report.named_metrics.get(name.partition(".")[2], 0.0)
    value = getattr(report, name)
    return float(value)


def report_utilization(report: LoadReport, metric_names: Sequence[str] = ()) -> float:
    """The utilization a weight divides by (gRFC A114): ``application_utilization`` if reported,
    else the largest positive metric named in ``metric_names``, else ``cpu_utilization``."""
    if report.application_utilization > 0:
        return report.application_utilization
    best = 0.0
    for name in metric_names:
        value = _metric(report, name)
        if value > best and math.isfinite(value):
            best = value
    return best if best > 0 else report.cpu_utilization


@dataclass(frozen=True, slots=True)
class WeightedRoundRobin:
    """``policy=`` factory of gRFC A58's ``weighted_round_robin`` (see the module's text).

    Times are in seconds; the defaults are A58's. ``oob_reporting_period`` is the interval asked
    of each server's load report stream (a server may grant a longer one: grpc-go's and
    :class:`~aiodiscovery.LoadReporter`'s default minimum is 30 s).
    """

    oob_reporting_period: float = 10.0
    blackout_period: float = 10.0
    weight_expiration_period: float = 180.0
    weight_update_period: float = 1.0
    error_utilization_penalty: float = 1.0
    metric_names_for_computing_utilization: tuple[str, ...] = ()
    slow_start: SlowStart | None = None

    def __post_init__(self) -> None:
        if _seconds("oob_reporting_period", self.oob_reporting_period) <= 0:
            raise ValueError("oob_reporting_period must be > 0 seconds")
        _seconds("blackout_period", self.blackout_period)
        _seconds("weight_expiration_period", self.weight_expiration_period)
        _seconds("weight_update_period", self.weight_update_period)
        penalty = self.error_utilization_penalty
        if not isinstance(penalty, int | float) or not penalty >= 0:
            raise ValueError(f"error_utilization_penalty must be >= 0, not {penalty!r}")
        names: object = self.metric_names_for_computing_utilization
        if isinstance(names, str) or not isinstance(names, tuple):
            raise TypeError("metric_names_for_computing_utilization must be a tuple of names")
        for name in names:
            if name not in _METRIC_FIELDS and not (
                isinstance(name, str) and name.startswith("named_metrics.") and len(name) > 14
            ):
                raise ValueError(
                    f"unsupported utilization metric {name!r}: use one of "
                    f"{', '.join(_METRIC_FIELDS)} or named_metrics.<name>"
                )
        if self.slow_start is not None and not isinstance(self.slow_start, SlowStart):
            raise TypeError("slow_start must be an aiodiscovery.SlowStart")

    def __call__(self) -> WeightedRoundRobinPicker[Any]:
        """A fresh picker with this configuration."""
        return WeightedRoundRobinPicker(self)


class _Load:
    """One server's weight and the times A58 and A100 judge it by (monotonic seconds)."""

    __slots__ = ("last_updated", "non_empty_since", "ready", "ready_since", "reports", "weight")

    def __init__(self) -> None:
        self.weight = 0.0
        self.non_empty_since = math.inf
        self.last_updated = -math.inf
        self.ready = False
        self.ready_since = 0.0
        self.reports = 0

    def record(self, report: LoadReport, now: float, config: WeightedRoundRobin) -> None:
        """Take a report: a new weight, if it yields one."""
        self.reports += 1
        qps = report.qps
        utilization = report_utilization(report, config.metric_names_for_computing_utilization)
        if utilization > 0 and qps > 0:
            utilization += report.eps / qps * config.error_utilization_penalty
        weight = qps / utilization if utilization > 0 else 0.0
        if not weight > 0 or not math.isfinite(weight):
            return
        if self.non_empty_since == math.inf:
            self.non_empty_since = now
        self.last_updated = now
        self.weight = weight

    def current(self, now: float, config: WeightedRoundRobin) -> float:
        """The weight to use now: 0 while in blackout, or once the last report is too old."""
        if now - self.last_updated >= config.weight_expiration_period:
            self.non_empty_since = math.inf
            return 0.0
        blackout = config.blackout_period
        if blackout > 0 and now - self.non_empty_since < blackout:
            return 0.0
        return self.weight


class WeightedRoundRobinPicker(Picker[S]):
    """gRFC A58's ``weighted_round_robin`` picker; build it with :class:`WeightedRoundRobin`."""

    def __init__(self, config: WeightedRoundRobin | None = None) -> None:
        self._config = config or WeightedRoundRobin()
        self._period = max(self._config.weight_update_period, _MIN_UPDATE_PERIOD)
        self._subchannels: Sequence[S] = ()
        # Keyed by address: a subchannel renewed for the same address keeps its reports.
        self._loads: dict[str, _Load] = {}
        self._weights: list[float] = []
        self._weight_of: dict[str, float] = {}
        self._periods: list[float] = []
        self._schedule: list[tuple[float, int]] = []
        self._equal = True
        self._next = random.randrange(1 << 30)
        self._due = 0.0

    def update(self, subchannels: Sequence[S]) -> None:
        """Take the new usable list; a server that has just become READY starts afresh."""
        now = time.monotonic()
        loads: dict[str, _Load] = {}
        for sub in subchannels:
            load = self._loads.get(sub.address) or _Load()
            if sub.state is _READY:
                if not load.ready:
                    # A58: back to READY resets the blackout; A100: and starts the slow start.
                    load.ready, load.ready_since, load.non_empty_since = True, now, math.inf
            else:
                load.ready = False
            loads[sub.address] = load
        self._loads = loads
        self._subchannels = subchannels
        self._rebuild(now)

    def load_listener(self) -> LoadListener:
        """The picker itself takes the servers' reports."""
        return self

    @property
    def report_interval(self) -> float:
        """The interval asked of each server's report stream."""
        return self._config.oob_reporting_period

    def report(self, address: str, report: LoadReport) -> None:
        """Take a report from the server at ``address`` into its weight."""
        load = self._loads.get(address)
        if load is not None:
            load.record(report, time.monotonic(), self._config)

    def weight(self, sub: S) -> float | None:
        """The weight ``sub`` has in the current schedule."""
        return self._weight_of.get(sub.address)

    def _rebuild(self, now: float) -> None:
        config = self._config
        subs = self._subchannels
        raw = [self._loads[s.address].current(now, config) for s in subs]
        known = [w for w in raw if w > 0]
        if len(known) < 2:
            weights = [1.0] * len(subs)
        else:
            mean = sum(known) / len(known)
            weights = [min(w, mean * _MAX_RATIO) if w > 0 else mean for w in raw]
            floor = max(weights) * _MIN_RATIO
            weights = [max(w, floor) for w in weights]
        slow = config.slow_start
        if slow is not None:
            weights = [
                w * slow.scale(now - self._loads[s.address].ready_since)
                for w, s in zip(weights, subs, strict=True)
            ]
        self._weights = weights
        self._weight_of = {s.address: w for s, w in zip(subs, weights, strict=True)}
        self._equal = all(w == weights[0] for w in weights)
        if not self._equal:
            self._periods = [1.0 / w for w in weights]
            # A58: each server's first deadline at random within its period, so that clients
            # rebuilding at the same moment do not all pick the same server first.
            self._schedule = [(random.random() * p, i) for i, p in enumerate(self._periods)]
            heapq.heapify(self._schedule)
        self._due = now + self._period

    def pick(self) -> S:
        """The server with the earliest deadline (each in turn while the weights are equal)."""
        now = time.monotonic()
        if now >= self._due:
            self._rebuild(now)
        if self._equal:
            self._next += 1
            return self._subchannels[self._next % len(self._subchannels)]
        schedule = self._schedule
        deadline, index = schedule[0]
        heapq.heapreplace(schedule, (deadline + self._periods[index], index))
        return self._subchannels[index]


@dataclass(frozen=True, slots=True)
class LeastRequest:
    """``policy=`` factory of gRFC A48's ``least_request``: of ``choice_count`` distinct servers
    drawn at random, the one with the fewest calls in flight (the first drawn among equals).

    ``choice_count`` must be at least 2; above 10 it counts as 10, as A48 says.
    """

    choice_count: int = 2

    def __post_init__(self) -> None:
        count = self.choice_count
        if not isinstance(count, int) or isinstance(count, bool) or count < 2:
            raise ValueError(f"choice_count must be a whole number >= 2, not {count!r}")

    def __call__(self) -> LeastRequestPicker[Any]:
        """A fresh picker with this choice count."""
        return LeastRequestPicker(self.choice_count)


class LeastRequestPicker(P2CPicker[S]):
    """gRFC A48's ``least_request`` picker; build it with :class:`LeastRequest`.

    :class:`P2CPicker` with ``choice_count`` draws. A48 draws with replacement, so with few
    servers it often compares a server with itself (one pick in three, with two draws among
    three servers) and has no choice at all; here the draws are distinct, and with no more
    servers than draws every server is compared.
    """

    def __init__(self, choice_count: int = 2) -> None:
        super().__init__()
        self._choices = min(max(choice_count, 2), _MAX_CHOICES)

    def pick(self) -> S:
        """The least busy of ``choice_count`` distinct random servers (the first drawn among
        equals)."""
        subchannels = self._subchannels
        count = len(subchannels)
        draw = random.random
        if count <= self._choices:
            # Every server: start at a random one, so that ties do not all go to the first.
            start = int(draw() * count)
            best = subchannels[start]
            for i in range(start + 1, start + count):
                other = subchannels[i % count]
                if other.in_flight < best.in_flight:
                    best = other
            return best
        first = int(draw() * count)
        best = subchannels[first]
        drawn = {first}
        while len(drawn) < self._choices:
            index = int(draw() * count)
            if index in drawn:
                continue
            drawn.add(index)
            other = subchannels[index]
            if other.in_flight < best.in_flight:
                best = other
        return best
