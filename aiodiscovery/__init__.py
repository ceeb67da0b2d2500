"""aiodiscovery: asyncio service discovery on etcd v3 for grpc.aio.

Endpoints are stored exactly as etcd's Go client (``client/v3/naming/endpoints``) stores them, so Go
and Python services share one registry.
"""

from __future__ import annotations

from ._address import Address, allow_networks, parse_address
from ._balancer import PoolStatistics, SubchannelStatistics
from ._endpoint import Endpoint, Operation, Update, decode_endpoint, encode_endpoint, parse_target
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
from ._pool import BalancedChannel, resolve
from ._protection import MassRemovalProtection
from ._registrar import Registrar, RegistrarState, RegistrarStatistics
from ._watcher import EndpointSet, WatchBatch, Watcher, WatcherStatistics

__all__ = [
    "Address",
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
    "MassRemovalProtection",
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
    "allow_networks",
    "connect",
    "decode_endpoint",
    "encode_endpoint",
    "parse_address",
    "parse_target",
    "reauthenticate",
    "resolve",
]
