"""aiodiscovery: asyncio service discovery on etcd v3 for grpc.aio.

Endpoints are stored exactly as etcd's Go client (``client/v3/naming/endpoints``) stores them, so Go
and Python services share one registry.
"""

from __future__ import annotations

from ._endpoint import (
    Endpoint,
    Operation,
    Update,
    decode_endpoint,
    encode_attributes,
    encode_endpoint,
    metadata_attributes,
    metadata_weight,
    parse_target,
)
from ._etcd import EtcdClient, connect, reauthenticate
from ._exceptions import (
    AiodiscoveryError,
    AuthenticationError,
    DecodeError,
    EtcdError,
    EtcdUnavailableError,
    LeaseNotFoundError,
    TransactionTooLargeError,
)
from ._manager import EndpointManager
from ._policies import (
    P2CPicker,
    Picker,
    PickFirstPicker,
    RoundRobinPicker,
    SubchannelView,
    WeightedPicker,
)
from ._pool import BalancedChannel, PoolStatistics, SubchannelStatistics, resolve
from ._registrar import Registrar, RegistrarState, RegistrarStatistics
from ._watcher import EndpointSet, WatchBatch, Watcher, WatcherStatistics

__all__ = [
    "AiodiscoveryError",
    "AuthenticationError",
    "BalancedChannel",
    "DecodeError",
    "Endpoint",
    "EndpointManager",
    "EndpointSet",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailableError",
    "LeaseNotFoundError",
    "Operation",
    "P2CPicker",
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
    "encode_attributes",
    "encode_endpoint",
    "metadata_attributes",
    "metadata_weight",
    "parse_target",
    "reauthenticate",
    "resolve",
]
