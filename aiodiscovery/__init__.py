"""aiodiscovery: asyncio service discovery on etcd v3 for grpc.aio.

Endpoints are stored exactly as etcd's Go client (``client/v3/naming/endpoints``) stores them, so Go
and Python services share one registry.
"""

from __future__ import annotations

from ._endpoint import Endpoint, Operation, Update, decode_endpoint, encode_endpoint, parse_target
from ._etcd import EtcdClient, connect
from ._exceptions import (
    AiodiscoveryError,
    DecodeError,
    EtcdError,
    EtcdUnavailableError,
    LeaseNotFoundError,
    TransactionTooLargeError,
)
from ._manager import EndpointManager

__all__ = [
    "AiodiscoveryError",
    "DecodeError",
    "Endpoint",
    "EndpointManager",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailableError",
    "LeaseNotFoundError",
    "Operation",
    "TransactionTooLargeError",
    "Update",
    "connect",
    "decode_endpoint",
    "encode_endpoint",
    "parse_target",
]
