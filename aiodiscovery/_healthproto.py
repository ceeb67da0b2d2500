"""The standard gRPC health protocol (``grpc/health/v1/health.proto``): messages and one reader.

The two messages are built at run time from their descriptor, with the protobuf runtime that
etcd's own stubs already need: following a server's health needs no extra package and nothing
generated at build time. :class:`HealthStream` reads one ``Watch`` call; both the Registrar
(a server's own health) and the pool (each endpoint's health) follow servers through it, and only
their policies differ: what a silence means, how soon to reopen.
"""

from __future__ import annotations

import enum
import functools
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ._grpccall import close_call, rpc_step
from ._logsafe import safe

__all__ = ["WATCH_METHOD", "HealthStream", "ServingStatus", "messages", "status_name"]

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


class HealthStream:
    """One ``Health/Watch`` call for ``service`` on ``channel``: statuses, then how it ended.

    :meth:`next` gives the statuses one by one (names, as :func:`status_name`), then ``None``
    once the call has ended: :attr:`why` says how, :attr:`unimplemented` whether the server has
    no health service. ``wait_for_ready`` waits for a server that is not listening yet instead
    of failing at once.
    """

    def __init__(
        self, channel: grpc.aio.Channel, service: str, *, wait_for_ready: bool = False
    ) -> None:
        request_type, response_type = messages()
        watch = channel.unary_stream(
            WATCH_METHOD,
            request_serializer=request_type.SerializeToString,
            response_deserializer=lambda data: response_type.FromString(data).status,
        )
        self._call = watch(request_type(service=service), wait_for_ready=wait_for_ready)
        #: Whether any status came.
        self.answered = False
        #: How the call ended (``None`` while it goes on).
        self.why: str | None = None
        #: Whether it ended with UNIMPLEMENTED: the server has no health service.
        self.unimplemented = False

    async def next(self) -> str | None:
        """The next status, or ``None`` once the call has ended."""
        if self.why is not None:
            return None
        try:
            value = await rpc_step(self._call.read())
        except grpc.aio.AioRpcError as exc:
            self.unimplemented = exc.code() is grpc.StatusCode.UNIMPLEMENTED
            self.why = f"{exc.code().name}: {safe(exc.details())}"
            return None
        if value is grpc.aio.EOF:
            self.why = "the server ended the stream"
            return None
        self.answered = True
        return status_name(value)

    async def close(self) -> None:
        """Cancel the call (if it goes on) and let grpc finish its bookkeeping."""
        await close_call(self._call)
