"""Load-balancing policies: pickers that choose a subchannel for each call.

A :class:`Picker` sees only usable subchannels (READY ones, or, when none is READY, the best of the
rest). :meth:`Picker.update` runs when that list changes, :meth:`Picker.pick` on every call, so
``pick`` must be cheap and must not await. Write your own by subclassing :class:`Picker` and passing
the class (or any zero-argument factory) as ``resolve(..., policy=MyPicker)``.
"""

from __future__ import annotations

import abc
import logging
import random
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import grpc

from .._codec.endpoint import metadata_weight
from .._logsafe import safe
from .._orcaproto import LoadReport

__all__ = [
    "LoadListener",
    "P2CPicker",
    "PickFirstPicker",
    "Picker",
    "RoundRobinPicker",
    "SubchannelView",
    "WeightedPicker",
]

logger = logging.getLogger("aiodiscovery.pool")


class SubchannelView(Protocol):
    """What a picker may read of a subchannel (one gRPC channel to one address)."""

    @property
    def address(self) -> str:
        """The address dialled, as registered in etcd."""

    @property
    def metadata(self) -> object:
        """The endpoint metadata registered with the address (``None`` if none)."""

    @property
    def state(self) -> grpc.ChannelConnectivity:
        """The last connectivity state seen."""

    @property
    def in_flight(self) -> int:
        """Calls started on it and not finished yet."""


S = TypeVar("S", bound=SubchannelView)


class LoadListener(Protocol):
    """What a load-aware policy takes from the servers' out-of-band load reports."""

    @property
    def report_interval(self) -> float:
        """Seconds between reports to ask each server for (it may send them less often)."""

    def report(self, address: str, report: LoadReport) -> None:
        """Take a report the server at ``address`` sent; it must be cheap and must not raise."""


class Picker(abc.ABC, Generic[S]):
    """Chooses a subchannel for each call among the usable ones.

    Generic over the subchannel type: :meth:`pick` returns one of the objects :meth:`update`
    was given, so the pool gets its own subchannels back (``Picker[SubchannelView]`` is what a
    policy written against the protocol alone sees).
    """

    @abc.abstractmethod
    def update(self, subchannels: Sequence[S]) -> None:
        """Take the new list of usable subchannels (never empty), in a stable order."""

    @abc.abstractmethod
    def pick(self) -> S:
        """Return the subchannel for the next call; called only after an :meth:`update`."""

    def load_listener(self) -> LoadListener | None:
        """Where the servers' load reports should go, if this policy balances on them.

        With a listener, the pool opens an ORCA out-of-band stream
        (``OpenRcaService/StreamCoreMetrics``) on every READY subchannel and hands each report
        to it. ``None`` (the default): no stream.
        """
        return None

    def weight(self, sub: S) -> float | None:
        """The weight ``sub`` has in the picks now, for statistics (``None``: no weights)."""
        return None


class RoundRobinPicker(Picker[S]):
    """Each usable subchannel in turn (gRPC's ``round_robin``)."""

    def __init__(self) -> None:
        self._subchannels: Sequence[S] = ()
        # A random start keeps many clients from all hitting the first server at once.
        self._next = random.randrange(1 << 30)

    def update(self, subchannels: Sequence[S]) -> None:
        """Take the new usable list; the rotation carries on where it was."""
        self._subchannels = subchannels

    def pick(self) -> S:
        """The next subchannel in turn."""
        self._next += 1
        return self._subchannels[self._next % len(self._subchannels)]


class PickFirstPicker(Picker[S]):
    """The first usable subchannel, in registration order (gRPC's ``pick_first``)."""

    def __init__(self) -> None:
        self._first: S | None = None

    def update(self, subchannels: Sequence[S]) -> None:
        """Take the new usable list and stick to its first entry."""
        self._first = subchannels[0]

    def pick(self) -> S:
        """The first usable subchannel."""
        assert self._first is not None
        return self._first


class P2CPicker(Picker[S]):
    """Power of two choices: of two random subchannels, the one with fewer calls in flight."""

    def __init__(self) -> None:
        self._subchannels: Sequence[S] = ()

    def update(self, subchannels: Sequence[S]) -> None:
        """Take the new usable list."""
        self._subchannels = subchannels

    def pick(self) -> S:
        """The less loaded of two random subchannels."""
        subchannels = self._subchannels
        count = len(subchannels)
        if count == 1:
            return subchannels[0]
        # Two distinct indices by hand: random.sample costs four times as much per call.
        i = int(random.random() * count)
        j = int(random.random() * (count - 1))
        if j >= i:
            j += 1
        first, second = subchannels[i], subchannels[j]
        return first if first.in_flight <= second.in_flight else second


# The largest weight honoured. Smooth weighted round robin costs the same whatever the weights,
# but a share of more than 10,000 to 1 is no longer balancing, and a bound keeps every picker
# (ours or a table-based one) from sizing anything by a number the registry chose.
MAX_WEIGHT = 10_000


def endpoint_weight(
    metadata: object, address: str, warned: set[tuple[str, str]] | None = None
) -> int:
    """The weight in endpoint metadata: 1 when absent, at most :data:`MAX_WEIGHT`.

    The weight is the ``weight`` attribute, in the Go-safe string form (``"weight=3"``, see
    :meth:`Endpoint.with_attributes`) or the legacy object form (``{"weight": 3}``, which crashes
    grpc-go clients of the same service). A weight that is not a whole number >= 1 counts as 1, a
    larger one than :data:`MAX_WEIGHT` as :data:`MAX_WEIGHT`, and either is logged as a warning;
    pass ``warned`` to log each (address, problem) only once.
    """
    try:
        weight = metadata_weight(metadata)
    except ValueError as exc:
        return _warn_weight(1, str(exc), address, warned)
    if weight is None:
        return 1
    if weight > MAX_WEIGHT:
        return _warn_weight(
            MAX_WEIGHT, f"weight {weight} is more than {MAX_WEIGHT}", address, warned
        )
    return weight


def _warn_weight(used: int, problem: str, address: str, warned: set[tuple[str, str]] | None) -> int:
    seen = (address, problem)
    if warned is not None:
        if seen in warned:
            return used
        warned.add(seen)
    logger.warning("endpoint %s: %s; using %d", safe(address), safe(problem), used)
    return used


class WeightedPicker(Picker[S]):
    """Smooth weighted round robin (as nginx does) on the metadata weight ``{"weight": n}``.

    Over any ``sum(weights)`` consecutive picks each subchannel gets exactly its weight, spread
    out rather than in runs.
    """

    def __init__(self) -> None:
        self._subchannels: Sequence[S] = ()
        self._weights: list[int] = []
        self._current: list[int] = []
        self._total = 0
        self._weight_of: dict[str, int] = {}
        # update() runs on every connectivity change: a bad weight is worth one warning, not
        # one per flap. Only a new bad value (or address) warns again.
        self._warned: set[tuple[str, str]] = set()

    def update(self, subchannels: Sequence[S]) -> None:
        """Take the new usable list and re-read the weights."""
        self._subchannels = subchannels
        self._weights = [endpoint_weight(s.metadata, s.address, self._warned) for s in subchannels]
        self._current = [0] * len(subchannels)
        self._total = sum(self._weights)
        self._weight_of = {s.address: w for s, w in zip(subchannels, self._weights, strict=True)}

    def weight(self, sub: S) -> float | None:
        """The metadata weight of ``sub`` (``None`` if it is not in the usable list)."""
        weight = self._weight_of.get(sub.address)
        return None if weight is None else float(weight)

    def pick(self) -> S:
        """The subchannel whose running credit is highest."""
        current = self._current
        best = 0
        for i, weight in enumerate(self._weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._subchannels[best]
