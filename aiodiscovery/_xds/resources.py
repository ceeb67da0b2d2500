"""The xDS resources of one service, built from its live endpoint set and its :class:`XdsPolicy`.

Every resource of a service carries the service's name (``foo/bar/my-service``): the Listener
that ``xds:///foo/bar/my-service`` asks for, its RouteConfiguration, the Cluster it routes to and
that Cluster's ClusterLoadAssignment. Registry data is untrusted: an endpoint a gRPC client would
refuse (a host name where xDS wants an IP address, an address registered twice, a bad weight)
would make it reject the whole assignment, so it is left out here and named in ``skipped``; so
is one the pool would not dial either (unspecified, link-local, multicast: see
:func:`~aiodiscovery.address_refusal`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.pick_first.v3 import pick_first_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from .._codec.endpoint import metadata_attributes, metadata_weight
from .._codec.endpointset import EndpointSet
from .._selection.address import address_refusal, parse_address
from .policy import XdsPolicy

__all__ = [
    "CLUSTER",
    "ENDPOINTS",
    "LISTENER",
    "ROUTE",
    "TYPES",
    "Assignment",
    "build_assignment",
    "build_cluster",
    "build_listener",
    "build_route",
]

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINTS = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINTS)
_MAX_UINT32 = 2**32 - 1
_HEALTH = {
    "healthy": health_check_pb2.HEALTHY,
    "unhealthy": health_check_pb2.UNHEALTHY,
    "draining": health_check_pb2.DRAINING,
    "drained": health_check_pb2.DRAINING,
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _ads() -> Any:
    # Everything comes over the one ADS stream the client opened to us.
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def build_listener(name: str) -> Any:
    """The API listener ``xds:///name`` resolves: an HTTP connection manager routing by RDS."""
    manager = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=name),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router())
            )
        ],
    )
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=_pack(manager))
    )


def build_route(name: str, policy: XdsPolicy) -> Any:
    """Every call of the service's authority to its one cluster, with the policy's retries."""
    action = route_components_pb2.RouteAction(cluster=name)
    if policy.hash_header is not None:
        action.hash_policy.add().header.header_name = policy.hash_header
    if policy.retry_on:
        base, cap = policy.retry_backoff
        action.retry_policy.CopyFrom(
            route_components_pb2.RetryPolicy(
                retry_on=",".join(policy.retry_on),
                num_retries=wrappers_pb2.UInt32Value(value=policy.num_retries),
                retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
                    base_interval=_duration(base), max_interval=_duration(cap)
                ),
            )
        )
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""), route=action
    )
    host = route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def build_cluster(name: str, policy: XdsPolicy) -> Any:
    """An EDS cluster with the policy's balancing, outlier detection and circuit breaking."""
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=name
        ),
    )
    if policy.lb_policy == "pick_first":
        pick_first = cluster.load_balancing_policy.policies.add()
        pick_first.typed_extension_config.name = "envoy.load_balancing_policies.pick_first"
        pick_first.typed_extension_config.typed_config.Pack(pick_first_pb2.PickFirst())
    else:
        cluster.lb_policy = cluster_pb2.Cluster.LbPolicy.Value(policy.lb_policy.upper())
    if policy.lb_policy == "ring_hash":
        low, high = policy.ring_size
        cluster.ring_hash_lb_config.minimum_ring_size.value = low
        cluster.ring_hash_lb_config.maximum_ring_size.value = high
    if policy.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(_outlier(policy))
    if policy.max_requests is not None:
        cluster.circuit_breakers.CopyFrom(
            circuit_breaker_pb2.CircuitBreakers(
                thresholds=[
                    circuit_breaker_pb2.CircuitBreakers.Thresholds(
                        max_requests=wrappers_pb2.UInt32Value(value=policy.max_requests)
                    )
                ]
            )
        )
    return cluster


def _outlier(policy: XdsPolicy) -> Any:
    od = policy.outlier_detection
    assert od is not None
    u32 = wrappers_pb2.UInt32Value
    return outlier_detection_pb2.OutlierDetection(
        interval=_duration(od.interval),
        base_ejection_time=_duration(od.base_ejection_time),
        max_ejection_time=_duration(max(od.base_ejection_time, od.max_ejection_time)),
        max_ejection_percent=u32(value=od.max_ejection_percent),
        consecutive_5xx=u32(value=od.consecutive_failures),
        enforcing_consecutive_5xx=u32(value=od.enforcing_consecutive_failures),
        # xDS writes the factor in thousandths (1.9 -> 1900).
        success_rate_stdev_factor=u32(value=round(od.success_rate_stdev_factor * 1000)),
        enforcing_success_rate=u32(value=od.enforcing_success_rate),
        success_rate_minimum_hosts=u32(value=od.success_rate_minimum_hosts),
        success_rate_request_volume=u32(value=od.success_rate_request_volume),
        failure_percentage_threshold=u32(value=od.failure_percentage_threshold),
        enforcing_failure_percentage=u32(value=od.enforcing_failure_percentage),
        failure_percentage_minimum_hosts=u32(value=od.failure_percentage_minimum_hosts),
        failure_percentage_request_volume=u32(value=od.failure_percentage_request_volume),
    )


@dataclass
class Assignment:
    """A service's ClusterLoadAssignment and the registry keys left out of it, with why."""

    message: Any
    endpoints: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


def build_assignment(name: str, endpoints: EndpointSet, policy: XdsPolicy) -> Assignment:
    """The live endpoints grouped by zone (locality), weighted and with their health status.

    A locality weighs the sum of its endpoints' weights (gRPC splits calls between localities by
    these, then balances within one); the sums are scaled down if together they would exceed
    2**32 - 1, which a client refuses.
    """
    skipped: dict[str, str] = {}
    seen: set[tuple[str, int]] = set()
    zones: defaultdict[str, list[Any]] = defaultdict(list)
    weights: defaultdict[str, int] = defaultdict(int)
    for key, endpoint in endpoints.items():
        try:
            address = parse_address(endpoint.addr)
        except ValueError as exc:
            skipped[key] = str(exc)
            continue
        if address.ip is None:
            skipped[key] = f"{endpoint.addr!r} is a host name; xDS endpoints are IP addresses"
            continue
        # The pool's default policy: no client of ours dials a bind, link-local or multicast
        # address (the address parsed, so only that policy can refuse it here).
        refusal = address_refusal(endpoint.addr)
        if refusal is not None:
            skipped[key] = refusal
            continue
        where = (str(address.ip), address.port)
        if where in seen:
            skipped[key] = f"{endpoint.addr!r} is registered under another key too"
            continue
        try:
            weight = metadata_weight(endpoint.metadata) or 1
        except ValueError as exc:
            skipped[key] = str(exc)
            continue
        seen.add(where)
        attributes = metadata_attributes(endpoint.metadata)
        zone = attributes.get("zone", "")
        health = _HEALTH.get(attributes.get(policy.health_attribute, ""), health_check_pb2.UNKNOWN)
        socket = address_pb2.SocketAddress(address=where[0], port_value=where[1])
        zones[zone].append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(socket_address=socket)
                ),
                health_status=health,
                load_balancing_weight=wrappers_pb2.UInt32Value(value=weight),
            )
        )
        weights[zone] += weight
    total = sum(weights.values())
    # Each locality keeps a weight of at least 1, so room is left for those rounded up.
    scale = min(1.0, (_MAX_UINT32 - len(weights)) / total) if total else 1.0
    localities = [
        endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(zone=zone),
            lb_endpoints=members,
            load_balancing_weight=wrappers_pb2.UInt32Value(
                value=max(1, int(weights[zone] * scale))
            ),
        )
        for zone, members in sorted(zones.items())
    ]
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=localities)
    return Assignment(message, sum(len(m) for m in zones.values()), skipped)
