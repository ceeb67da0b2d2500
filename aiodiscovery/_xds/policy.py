"""XdsPolicy: what a service's xDS Cluster and Route tell grpc clients, besides the endpoints.

Plain data, checked when made: a policy that a client would reject (NACK) because of a value out
of range is refused here with a clear error instead. What a client may still refuse is a
policy it does not implement (``least_request``, ``random`` and ``maglev`` are for Envoy; grpcio
NACKs them), which the server then reports (see :class:`~.stats.XdsStatistics`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

__all__ = ["LB_POLICIES", "RETRY_CODES", "OutlierSettings", "XdsPolicy"]

#: Load-balancing policies a Cluster can name. gRPC clients implement ``round_robin``,
#: ``ring_hash`` and ``pick_first``; ``least_request``, ``random`` and ``maglev`` are for Envoy
#: data planes (grpcio 1.85 NACKs all three).
LB_POLICIES = ("round_robin", "ring_hash", "pick_first", "least_request", "random", "maglev")
#: Status names a route's retry policy may retry on (gRPC's xDS retry support, gRFC A44).
RETRY_CODES = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
# gRPC's bounds for a ring hash's size (gRFC A42).
_MAX_RING = 8_388_608
# gRPC metadata keys: lower case; binary ("-bin") headers cannot be hashed on.
_HEADER = re.compile(r"[0-9a-z_.-]+(?<!-bin)")


class OutlierSettings(Protocol):
    """The fields of :class:`aiodiscovery.OutlierDetection` the Cluster carries (gRFC A50)."""

    @property
    def interval(self) -> float: ...
    @property
    def base_ejection_time(self) -> float: ...
    @property
    def max_ejection_time(self) -> float: ...
    @property
    def max_ejection_percent(self) -> int: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def enforcing_consecutive_failures(self) -> int: ...
    @property
    def success_rate_stdev_factor(self) -> float: ...
    @property
    def enforcing_success_rate(self) -> int: ...
    @property
    def success_rate_minimum_hosts(self) -> int: ...
    @property
    def success_rate_request_volume(self) -> int: ...
    @property
    def failure_percentage_threshold(self) -> int: ...
    @property
    def enforcing_failure_percentage(self) -> int: ...
    @property
    def failure_percentage_minimum_hosts(self) -> int: ...
    @property
    def failure_percentage_request_volume(self) -> int: ...


@dataclass(frozen=True)
class XdsPolicy:
    """How grpc clients balance and retry a service served over xDS.

    ``lb_policy`` is one of :data:`LB_POLICIES`; ``ring_size`` bounds a ``ring_hash`` ring
    (``(minimum, maximum)``), and ``hash_header`` names the request header whose value picks the
    endpoint (calls with the same value go to the same endpoint while it lives; without it, each
    call hashes anew). ``outlier_detection`` takes an :class:`aiodiscovery.OutlierDetection`
    (its interval, ejection times and percentages, success-rate and failure-percentage settings
    become the Cluster's; gRPC does not implement consecutive-failure ejection and ignores it).
    ``retry_on`` names the statuses a call is retried on (:data:`RETRY_CODES`; empty: no retry),
    at most ``num_retries`` times, backing off from ``retry_backoff[0]`` to ``retry_backoff[1]``
    seconds. ``max_requests`` caps the calls in flight to the service per client (circuit
    breaking; ``None``: gRPC's default of 1024).

    Endpoint health comes from the ``health_attribute`` of each endpoint's metadata (see
    :func:`aiodiscovery.metadata_attributes`): ``healthy``, ``unhealthy``, ``draining`` (or
    ``drained``); clients send no new calls to unhealthy or draining endpoints. Endpoints without
    it are UNKNOWN, which clients use.
    """

    lb_policy: str = "round_robin"
    ring_size: tuple[int, int] = (1024, _MAX_RING)
    hash_header: str | None = None
    outlier_detection: OutlierSettings | None = None
    retry_on: tuple[str, ...] = ()
    num_retries: int = 1
    retry_backoff: tuple[float, float] = (0.025, 0.25)
    max_requests: int | None = None
    health_attribute: str = "health"

    def __post_init__(self) -> None:
        if self.lb_policy not in LB_POLICIES:
            raise ValueError(f"lb_policy {self.lb_policy!r} is not one of {', '.join(LB_POLICIES)}")
        low, high = self.ring_size
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= _MAX_RING):
            raise ValueError(f"ring_size {self.ring_size!r}: need 1 <= minimum <= maximum <= 2**23")
        retry_on: object = self.retry_on
        if self.hash_header is not None and (
            self.lb_policy != "ring_hash"
            or not isinstance(self.hash_header, str)
            or _HEADER.fullmatch(self.hash_header) is None
        ):
            raise ValueError(
                f"hash_header {self.hash_header!r}: a lower-case header name, with ring_hash only"
            )
        if isinstance(retry_on, str):
            raise TypeError("retry_on is a tuple of status names, not one string")
        unknown = [code for code in self.retry_on if code not in RETRY_CODES]
        if unknown:
            raise ValueError(f"retry_on {unknown!r}: each must be one of {', '.join(RETRY_CODES)}")
        if not isinstance(self.num_retries, int) or not 1 <= self.num_retries <= 4:
            # gRPC caps attempts at 5 (gRFC A6): more retries would be silently cut.
            raise ValueError(f"num_retries {self.num_retries!r} must be a whole number 1 to 4")
        base, cap = self.retry_backoff
        if not (_seconds(base) and _seconds(cap) and 0 < base <= cap):
            raise ValueError(f"retry_backoff {self.retry_backoff!r}: need 0 < base <= maximum")
        if self.max_requests is not None and not (
            isinstance(self.max_requests, int) and 1 <= self.max_requests < 2**32
        ):
            raise ValueError(f"max_requests {self.max_requests!r} must be 1 to 2**32 - 1")
        if not isinstance(self.health_attribute, str) or not self.health_attribute:
            raise ValueError("health_attribute must be a non-empty attribute name")


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0
