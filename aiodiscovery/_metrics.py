"""OpenTelemetry metrics, read from the components' own statistics when a reader collects.

Nothing is measured on the call path: every instrument is an observable one, whose callback reads
the ``statistics()`` snapshots of the live clients, shared watches, Registrars and pools when the
OpenTelemetry SDK's reader collects. Components announce themselves with :func:`track` (a weak
reference, nothing more). Without the ``opentelemetry-api`` package (``aiodiscovery[otel]``),
:func:`track` is a no-op and nothing of OpenTelemetry is imported.

The instruments live on the meter ``aiodiscovery`` of the global meter provider: configure the
SDK in your application as for any instrumented library. The target is an attribute (the
service's key prefix, ``foo/bar/my-service/``), never part of a metric name; endpoints are
``server.address``/``server.port``, and pool metrics carry ``rpc.system="grpc"``, as
OpenTelemetry's conventions say.
"""

from __future__ import annotations

import importlib.util
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ._codec.endpoint import parse_target

__all__ = ["INSTRUMENTS", "track"]

_KINDS = ("client", "registrar", "lease", "pool")
_live: dict[str, weakref.WeakSet[Any]] = {kind: weakref.WeakSet() for kind in _KINDS}
_state = {"checked": False, "available": False, "registered": False}

Point = tuple[float, dict[str, str | int]]


@dataclass(frozen=True, slots=True)
class _Instrument:
    name: str
    kind: str  # "counter", "updown" (observable up-down counter) or "gauge"
    unit: str
    description: str
    points: Callable[[], Iterator[Point]]


def track(component: object, kind: str) -> None:
    """Report ``component`` (an ``EtcdClient``, ``Registrar``, ``LeaseKeeper`` or pool) in the
    metrics while it lives. A no-op without OpenTelemetry's API."""
    if not _state["checked"]:
        _state["checked"] = True
        try:
            _state["available"] = importlib.util.find_spec("opentelemetry.metrics") is not None
        except (ImportError, ValueError):
            _state["available"] = False
    if not _state["available"]:
        return
    _live[kind].add(component)
    if not _state["registered"]:
        _state["registered"] = True
        _register()


def _register() -> None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    from opentelemetry import metrics  # noqa: PLC0415

    try:
        release = version("aiodiscovery")
    except PackageNotFoundError:
        release = "0"
    meter = metrics.get_meter("aiodiscovery", release)
    factories = {
        "counter": meter.create_observable_counter,
        "updown": meter.create_observable_up_down_counter,
        "gauge": meter.create_observable_gauge,
    }
    for instrument in INSTRUMENTS:
        factories[instrument.kind](
            instrument.name,
            callbacks=[_callback(instrument.points, metrics.Observation)],
            unit=instrument.unit,
            description=instrument.description,
        )


def _callback(points: Callable[[], Iterator[Point]], observation: Any) -> Any:
    def observe(_options: object) -> Iterable[Any]:
        return [observation(value, attributes) for value, attributes in points()]

    return observe


# -- what each instrument reads ------------------------------------------------------------------


def _clients() -> list[Any]:
    return [c for c in list(_live["client"]) if c.connected]


def _client_points(field: str) -> Callable[[], Iterator[Point]]:
    def points() -> Iterator[Point]:
        for client in _clients():
            stats = client.statistics()
            value = getattr(stats.members, field, None)
            if value is None:
                value = getattr(stats, field)
            yield value, {"aiodiscovery.etcd.endpoints": ",".join(client.urls)}

    return points


def _active_member() -> Iterator[Point]:
    for client in _clients():
        yield (
            1,
            {
                "aiodiscovery.etcd.endpoints": ",".join(client.urls),
                "aiodiscovery.etcd.member": client.statistics().members.active,
            },
        )


def _watch_points(field: str) -> Callable[[], Iterator[Point]]:
    def points() -> Iterator[Point]:
        for client in _clients():
            for shared in client.watches.shared():
                yield getattr(shared.statistics(), field), {"aiodiscovery.target": shared.prefix}

    return points


def _registrars() -> list[Any]:
    return [r for r in list(_live["registrar"]) if r.state.value != "closed"]


def _registrar_state() -> Iterator[Point]:
    for registrar in _registrars():
        stats = registrar.statistics()
        yield (
            1,
            {
                "aiodiscovery.target": registrar.prefix,
                "aiodiscovery.registrar.state": stats.state.value,
            },
        )


def _registrar_points(field: str) -> Callable[[], Iterator[Point]]:
    def points() -> Iterator[Point]:
        for registrar in _registrars():
            yield getattr(registrar.statistics(), field), {"aiodiscovery.target": registrar.prefix}

    return points


def _lease_points(field: str) -> Callable[[], Iterator[Point]]:
    def points() -> Iterator[Point]:
        for keeper in [k for k in list(_live["lease"]) if not k.closed]:
            stats = keeper.statistics()
            yield getattr(stats, field), {"aiodiscovery.lease.ttl": stats.ttl or 0}

    return points


def _pools() -> list[Any]:
    return [p for p in list(_live["pool"]) if not p.closed]


def _endpoint(target: str, address: str) -> dict[str, str | int]:
    host, _, port = address.rpartition(":")
    attributes: dict[str, str | int] = {
        "rpc.system": "grpc",
        "aiodiscovery.target": parse_target(target),
        "server.address": host.strip("[]"),
    }
    if port.isdigit():
        attributes["server.port"] = int(port)
    return attributes


def _pool_points(field: str) -> Callable[[], Iterator[Point]]:
    def points() -> Iterator[Point]:
        for pool in _pools():
            stats = pool.statistics()
            for address, sub in stats.subchannels.items():
                value = getattr(sub, field, None)
                if value is not None:
                    yield value, _endpoint(stats.target, address)

    return points


def _pool_totals(field: str) -> Callable[[], Iterator[Point]]:
    def points() -> Iterator[Point]:
        for pool in _pools():
            stats = pool.statistics()
            value = getattr(stats, field, None)
            if value is not None:
                yield (
                    value,
                    {"rpc.system": "grpc", "aiodiscovery.target": parse_target(stats.target)},
                )

    return points


def _subchannel_states() -> Iterator[Point]:
    for pool in _pools():
        stats = pool.statistics()
        for state, count in stats.by_state().items():
            yield (
                count,
                {
                    "rpc.system": "grpc",
                    "aiodiscovery.target": parse_target(stats.target),
                    "aiodiscovery.subchannel.state": state,
                },
            )


_C, _U, _G = "counter", "updown", "gauge"

#: Every instrument: (name, kind, unit, description, what it reads).
INSTRUMENTS = (
    _Instrument(
        "aiodiscovery.etcd.member.active", _G, "{member}", "The etcd member in use", _active_member
    ),
    _Instrument(
        "aiodiscovery.etcd.failovers",
        _C,
        "{failover}",
        "Moves to another etcd member",
        _client_points("failovers"),
    ),
    _Instrument(
        "aiodiscovery.etcd.probes",
        _C,
        "{probe}",
        "Probes of a silent etcd member",
        _client_points("probes"),
    ),
    _Instrument(
        "aiodiscovery.etcd.authentications",
        _C,
        "{authentication}",
        "Successful Authenticate requests",
        _client_points("authentications"),
    ),
    _Instrument(
        "aiodiscovery.etcd.token_rejections",
        _C,
        "{rejection}",
        "Calls and streams etcd refused for their token",
        _client_points("token_rejections"),
    ),
    _Instrument(
        "aiodiscovery.watch.endpoints",
        _U,
        "{endpoint}",
        "Endpoints registered under the target",
        _watch_points("endpoints"),
    ),
    _Instrument(
        "aiodiscovery.watch.restarts",
        _C,
        "{restart}",
        "Watch streams that broke and were resumed",
        _watch_points("reconnects"),
    ),
    _Instrument(
        "aiodiscovery.watch.relists",
        _C,
        "{relist}",
        "Full re-reads after a compaction or a cancelled watch",
        _watch_points("relists"),
    ),
    _Instrument(
        "aiodiscovery.watch.bad_values",
        _C,
        "{value}",
        "Values dropped as no usable endpoint",
        _watch_points("bad_values"),
    ),
    _Instrument(
        "aiodiscovery.registrar.state",
        _U,
        "{registrar}",
        "Registrars by state",
        _registrar_state,
    ),
    _Instrument(
        "aiodiscovery.registrar.registrations",
        _C,
        "{registration}",
        "Successful puts of a Registrar's key",
        _registrar_points("registrations"),
    ),
    _Instrument(
        "aiodiscovery.registrar.losses",
        _C,
        "{loss}",
        "Registrations lost (lease or key gone)",
        _registrar_points("losses"),
    ),
    _Instrument(
        "aiodiscovery.lease.keepalives",
        _C,
        "{keepalive}",
        "Keep-alive replies that refreshed a lease",
        _lease_points("keepalive_round_trips"),
    ),
    _Instrument(
        "aiodiscovery.lease.losses",
        _C,
        "{loss}",
        "Leases lost and granted again",
        _lease_points("losses"),
    ),
    _Instrument(
        "aiodiscovery.pool.subchannels",
        _U,
        "{subchannel}",
        "Subchannels by connectivity state",
        _subchannel_states,
    ),
    _Instrument(
        "aiodiscovery.pool.picks",
        _C,
        "{call}",
        "Calls started on the endpoint",
        _pool_points("picks"),
    ),
    _Instrument(
        "aiodiscovery.pool.calls_in_flight",
        _U,
        "{call}",
        "Calls started on the endpoint and not finished",
        _pool_points("in_flight"),
    ),
    _Instrument(
        "aiodiscovery.pool.endpoint_weight",
        _G,
        "{weight}",
        "The endpoint's weight in the policy's picks (weighted policies only)",
        _pool_points("weight"),
    ),
    _Instrument(
        "aiodiscovery.pool.call_failures",
        _C,
        "{call}",
        "Calls on the endpoint that ended with a status other than OK or CANCELLED",
        _pool_points("failures"),
    ),
    _Instrument(
        "aiodiscovery.pool.ejections",
        _C,
        "{ejection}",
        "Times outlier detection ejected the endpoint",
        _pool_points("ejections"),
    ),
    _Instrument(
        "aiodiscovery.pool.retries",
        _C,
        "{attempt}",
        "Attempts after the first, made by a retryPolicy",
        _pool_totals("retries"),
    ),
    _Instrument(
        "aiodiscovery.pool.retries_throttled",
        _C,
        "{attempt}",
        "Retries refused by retryThrottling",
        _pool_totals("retries_throttled"),
    ),
    _Instrument(
        "aiodiscovery.pool.transparent_retries",
        _C,
        "{call}",
        "Calls that never left the client, sent once more to another endpoint",
        _pool_totals("transparent_retries"),
    ),
    _Instrument(
        "aiodiscovery.pool.no_endpoint_failures",
        _C,
        "{call}",
        "Calls failed at once for want of a usable endpoint",
        _pool_totals("no_endpoint_failures"),
    ),
    _Instrument(
        "aiodiscovery.pool.skipped_endpoints",
        _U,
        "{endpoint}",
        "Registered endpoints not dialled (bad or filtered address)",
        _pool_totals("skipped_endpoints"),
    ),
)
