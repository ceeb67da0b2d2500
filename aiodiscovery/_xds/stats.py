"""The xDS server's statistics: frozen snapshots, taken when asked for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["XdsNack", "XdsServiceStatistics", "XdsStatistics", "XdsStreamStatistics"]


@dataclass(frozen=True, slots=True)
class XdsNack:
    """A client's rejection of an answer: who, which type, which version, and why.

    ``kept`` is the version the client still uses (empty if it never accepted one).
    """

    node: str
    type: str
    version: str
    kept: str
    error: str


@dataclass(frozen=True, slots=True)
class XdsStreamStatistics:
    """One client's ADS stream: its node id, peer, subscriptions and accepted versions by type
    (``Listener``, ``RouteConfiguration``, ``Cluster``, ``ClusterLoadAssignment``)."""

    node: str
    peer: str
    subscribed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    acked: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class XdsServiceStatistics:
    """One service being served: its endpoints in the assignment, and the registry keys left out
    of it with why (a host name, an address registered twice, a bad weight)."""

    name: str
    subscribers: int
    endpoints: int
    skipped: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class XdsStatistics:
    """An :class:`XdsServer`'s counters.

    ``version`` is the version the next answer carries; ``acks`` and ``nacks`` count the
    clients' replies (``last_nack`` says what the last rejection was).
    """

    version: int = 0
    streams_opened: int = 0
    responses: int = 0
    acks: int = 0
    nacks: int = 0
    last_nack: XdsNack | None = None
    streams: tuple[XdsStreamStatistics, ...] = ()
    services: Mapping[str, XdsServiceStatistics] = field(default_factory=dict)
