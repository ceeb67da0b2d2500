"""aiodiscovery: asyncio service discovery on etcd v3 for grpc.aio.

Endpoints are stored exactly as etcd's Go client (``client/v3/naming/endpoints``) stores them, so Go
and Python services share one registry.
"""

from __future__ import annotations

from ._client import ClientStatistics, EtcdClient, connect, reauthenticate
from ._endpoint import Endpoint, Operation, Update, decode_endpoint, encode_endpoint, parse_target
from ._endpointset import EndpointSet
from ._exceptions import (
    AiodiscoveryError,
    AuthenticationError,
    DecodeError,
    EtcdError,
    EtcdUnavailableError,
    LeaseNotFoundError,
    TransactionTooLargeError,
)
from ._health import HealthCheckError
from ._lease import LeaseKeeper, LeaseState, LeaseStatistics
from ._manager import EndpointManager
from ._members import MemberStatistics
from ._policies import (
    P2CPicker,
    Picker,
    PickFirstPicker,
    RoundRobinPicker,
    SubchannelView,
    WeightedPicker,
)
from ._pool import BalancedChannel, PoolStatistics, SubchannelStatistics, resolve
from ._prefixwatch import PermissionDeniedError, WatchBatch, WatcherStatistics
from ._registrar import Registrar, RegistrarState, RegistrarStatistics
from ._watcher import Watcher

__all__ = [
    "AiodiscoveryError",
    "AuthenticationError",
    "BalancedChannel",
    "ClientStatistics",
    "DecodeError",
    "Endpoint",
    "EndpointManager",
    "EndpointSet",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailableError",
    "HealthCheckError",
    "LeaseKeeper",
    "LeaseNotFoundError",
    "LeaseState",
    "LeaseStatistics",
    "MemberStatistics",
    "Operation",
    "P2CPicker",
    "PermissionDeniedError",
    "PickFirstPicker",
    "Picker",
    "PoolStatistics",
    "Registrar",
    "RegistrarState",
    "RegistrarStatistics",
    "RoundRobinPicker",
    "SubchannelStatistics",
    "SubchannelView",
    "TransactionTooLargeError",
    "Update",
    "WatchBatch",
    "Watcher",
    "WatcherStatistics",
    "WeightedPicker",
    "connect",
    "decode_endpoint",
    "encode_endpoint",
    "parse_target",
    "reauthenticate",
    "resolve",
]
