"""The standard gRPC health protocol (``grpc/health/v1/health.proto``): its method and messages.

The two messages are built at run time from their descriptor, with the protobuf runtime that
etcd's own stubs already need: following a server's health needs no extra package and nothing
generated at build time. Both the Registrar (server side) and the pool (client side) use them.
"""

from __future__ import annotations

import enum
import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["WATCH_METHOD", "ServingStatus", "messages", "status_name"]

WATCH_METHOD = "/grpc.health.v1.Health/Watch"


class ServingStatus(enum.IntEnum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus``."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def status_name(value: int) -> str:
    """The name of a status; proto3 enums are open, and an unknown number says nothing good."""
    try:
        return ServingStatus(value).name
    except ValueError:
        return f"UNKNOWN({value})"


@functools.cache
def messages() -> tuple[Any, Any]:
    """The ``HealthCheckRequest`` and ``HealthCheckResponse`` message classes."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="aiodiscovery/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    statuses = response.enum_type.add(name="ServingStatus")
    for status in ServingStatus:
        statuses.value.add(name=status.name, number=status.value)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=field.LABEL_OPTIONAL,
    )
    # A pool of our own: grpcio-health-checking's generated module may use the default one.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
        for name in ("HealthCheckRequest", "HealthCheckResponse")
    )
