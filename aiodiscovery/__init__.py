"""aiodiscovery: asyncio service discovery on etcd v3 for grpc.aio.

Endpoints are stored exactly as etcd's Go client (``client/v3/naming/endpoints``) stores them, so Go
and Python services share one registry.
"""

from __future__ import annotations

from ._balancer.loadaware import (
    LeastRequest,
    LeastRequestPicker,
    SlowStart,
    WeightedRoundRobin,
    WeightedRoundRobinPicker,
    report_utilization,
)
from ._balancer.policies import (
    P2CPicker,
    Picker,
    PickFirstPicker,
    RoundRobinPicker,
    SubchannelView,
    WeightedPicker,
)
from ._codec.endpoint import (
    BUDGET_RATIO,
    DEFAULT_METADATA_BUDGET,
    Endpoint,
    Operation,
    Update,
    decode_endpoint,
    encode_attributes,
    encode_endpoint,
    encode_metadata,
    metadata_attributes,
    metadata_weight,
    parse_target,
)
from ._codec.endpointset import EndpointSet
from ._codec.keys import MAX_TTL
from ._etcd.auth import parse_user
from ._etcd.client import DEFAULT_TIMEOUT, ClientStatistics, EtcdClient
from ._etcd.connect import connect, reauthenticate
from ._etcd.members import MemberStatistics
from ._etcd.urls import DEFAULT_URL
from ._etcd.watch.prefix import WatchBatch, WatcherStatistics
from ._exceptions import (
    AiodiscoveryError,
    AuthenticationError,
    DecodeError,
    EtcdError,
    EtcdUnavailableError,
    HealthCheckError,
    LeaseNotFoundError,
    PermissionDeniedError,
    TransactionTooLargeError,
)
from ._logsafe import safe as printable
from ._naming.manager import EndpointManager
from ._naming.watcher import Watcher
from ._orcaproto import LoadReport
from ._pool.channel import BalancedChannel, resolve
from ._pool.stats import PoolStatistics, SubchannelStatistics
from ._registrar.lease import LeaseKeeper, LeaseState, LeaseStatistics
from ._registrar.registrar import Registrar, RegistrarState, RegistrarStatistics
from ._resilience.outlier import OutlierDetection
from ._selection.address import Address, address_refusal, allow_networks, parse_address
from ._selection.protection import MassRemovalProtection
from ._selection.selection import SelectionStatistics
from ._server.load import CallLoad, LoadReporter, call_load
from ._xds.local import local_xds_server
from ._xds.policy import XdsPolicy
from ._xds.server import XdsServer
from ._xds.stats import XdsNack, XdsServiceStatistics, XdsStatistics, XdsStreamStatistics

# Grouped by subsystem, bottom up (the layer table in tests/test_structure.py), sorted within.
# A single sorted list would hide which part of the house a name belongs to.
__all__ = [  # noqa: RUF022
    # the registry's data
    "BUDGET_RATIO",
    "DEFAULT_METADATA_BUDGET",
    "MAX_TTL",
    "Endpoint",
    "EndpointSet",
    "Operation",
    "Update",
    "decode_endpoint",
    "encode_attributes",
    "encode_endpoint",
    "encode_metadata",
    "metadata_attributes",
    "metadata_weight",
    "parse_target",
    "printable",
    # errors
    "AiodiscoveryError",
    "AuthenticationError",
    "DecodeError",
    "EtcdError",
    "EtcdUnavailableError",
    "HealthCheckError",
    "LeaseNotFoundError",
    "PermissionDeniedError",
    "TransactionTooLargeError",
    # etcd
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "ClientStatistics",
    "EtcdClient",
    "MemberStatistics",
    "connect",
    "parse_user",
    "reauthenticate",
    # naming: the endpoints manager and the live endpoint set
    "EndpointManager",
    "WatchBatch",
    "Watcher",
    "WatcherStatistics",
    # a server's registration
    "LeaseKeeper",
    "LeaseState",
    "LeaseStatistics",
    "Registrar",
    "RegistrarState",
    "RegistrarStatistics",
    # a server's load reports (ORCA)
    "CallLoad",
    "LoadReport",
    "LoadReporter",
    "call_load",
    # a client's channel: balancing, selection, resilience
    "Address",
    "BalancedChannel",
    "LeastRequest",
    "LeastRequestPicker",
    "MassRemovalProtection",
    "OutlierDetection",
    "P2CPicker",
    "PickFirstPicker",
    "Picker",
    "PoolStatistics",
    "RoundRobinPicker",
    "SelectionStatistics",
    "SlowStart",
    "SubchannelStatistics",
    "SubchannelView",
    "WeightedPicker",
    "WeightedRoundRobin",
    "WeightedRoundRobinPicker",
    "address_refusal",
    "allow_networks",
    "parse_address",
    "report_utilization",
    "resolve",
    # the registry as an xDS control plane: grpc core balances
    "XdsNack",
    "XdsPolicy",
    "XdsServer",
    "XdsServiceStatistics",
    "XdsStatistics",
    "XdsStreamStatistics",
    "local_xds_server",
]


def _publish() -> None:
    # As httpcore does: reprs, tracebacks and help() name the path users import from
    # (aiodiscovery.Registrar), not the private module a name happens to live in.
    for name in __all__:
        value = globals()[name]
        if callable(value) and getattr(value, "__module__", "").startswith("aiodiscovery._"):
            value.__module__ = __name__


_publish()
