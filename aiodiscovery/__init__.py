"""aiodiscovery: asyncio service discovery on etcd v3 for grpc.aio.

Endpoints are stored exactly as etcd's Go client (``client/v3/naming/endpoints``) stores them, so Go
and Python services share one registry.
"""

from __future__ import annotations

from ._address import Address, allow_networks, parse_address
from ._auth import parse_user
from ._client import DEFAULT_TIMEOUT, ClientStatistics, EtcdClient
from ._connect import connect, reauthenticate
from ._endpoint import (
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
from ._keys import MAX_TTL
from ._lease import LeaseKeeper, LeaseState, LeaseStatistics
from ._logsafe import safe as printable
from ._manager import EndpointManager
from ._members import MemberStatistics
from ._outlier import OutlierDetection
from ._policies import (
    P2CPicker,
    Picker,
    PickFirstPicker,
    RoundRobinPicker,
    SubchannelView,
    WeightedPicker,
)
from ._pool import BalancedChannel, resolve
from ._poolstats import PoolStatistics, SubchannelStatistics
from ._prefixwatch import PermissionDeniedError, WatchBatch, WatcherStatistics
from ._protection import MassRemovalProtection
from ._registrar import Registrar, RegistrarState, RegistrarStatistics
from ._selection import SelectionStatistics
from ._urls import DEFAULT_URL
from ._watcher import Watcher

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "MAX_TTL",
    "Address",
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
    "MassRemovalProtection",
    "MemberStatistics",
    "Operation",
    "OutlierDetection",
    "P2CPicker",
    "PermissionDeniedError",
    "PickFirstPicker",
    "Picker",
    "PoolStatistics",
    "Registrar",
    "RegistrarState",
    "RegistrarStatistics",
    "RoundRobinPicker",
    "SelectionStatistics",
    "SubchannelStatistics",
    "SubchannelView",
    "TransactionTooLargeError",
    "Update",
    "WatchBatch",
    "Watcher",
    "WatcherStatistics",
    "WeightedPicker",
    "allow_networks",
    "connect",
    "decode_endpoint",
    "encode_attributes",
    "encode_endpoint",
    "encode_metadata",
    "metadata_attributes",
    "metadata_weight",
    "parse_address",
    "parse_target",
    "parse_user",
    "printable",
    "reauthenticate",
    "resolve",
]
