"""ORCA, gRPC's backend load reports (gRFC A51): the messages, the trailer and the stream method.

``xds.data.orca.v3.OrcaLoadReport`` and ``xds.service.orca.v3.OrcaLoadReportRequest`` (from
cncf/xds) are built at run time from their descriptor, as :mod:`aiodiscovery._healthproto` does
for the health protocol: no generated code and no xDS package. Field numbers and types follow the
upstream protos, so the bytes are the ones grpc-go, grpc-java and grpc C++ send and read. A server
sends a report per call in the trailer :data:`TRAILER`, or every interval on the
:data:`STREAM_METHOD` stream.

:class:`LoadReport` is the report as plain data: what servers fill in and pickers read. Registry
and server data is untrusted input: :func:`decode_report` returns ``None`` for bytes that are not
a report, and keeps only finite numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import DecodeError

__all__ = [
    "STREAM_METHOD",
    "TRAILER",
    "LoadReport",
    "decode_report",
    "encode_report",
    "messages",
]

# gRFC A51; grpc-go's orca.internal.TrailerMetadataKey and grpc-java's interceptor use this name.
TRAILER = "endpoint-load-metrics-bin"
STREAM_METHOD = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics"


def _empty() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One ORCA load report (``xds.data.orca.v3.OrcaLoadReport``).

    Utilizations are fractions (1.0: fully used; more is allowed past a soft limit); ``qps`` and
    ``eps`` are queries and errors per second (the proto's ``rps_fractional`` and ``eps``).
    ``utilization`` and ``named_metrics`` are the proto's two maps of named values, ``request_cost``
    the per-call costs. A field at 0 is a field not reported, as in proto3.
    """

    cpu_utilization: float = 0.0
    mem_utilization: float = 0.0
    application_utilization: float = 0.0
    qps: float = 0.0
    eps: float = 0.0
    utilization: Mapping[str, float] = field(default_factory=_empty)
    named_metrics: Mapping[str, float] = field(default_factory=_empty)
    request_cost: Mapping[str, float] = field(default_factory=_empty)


# (message field, LoadReport attribute) of the scalar fields.
_SCALARS = (
    ("cpu_utilization", "cpu_utilization"),
    ("mem_utilization", "mem_utilization"),
    ("application_utilization", "application_utilization"),
    ("rps_fractional", "qps"),
    ("eps", "eps"),
)
_MAPS = ("utilization", "named_metrics", "request_cost")


@functools.cache
def messages() -> tuple[Any, Any]:
    """The ``OrcaLoadReport`` and ``OrcaLoadReportRequest`` message classes."""
    pool = descriptor_pool.DescriptorPool()
    duration = descriptor_pb2.FileDescriptorProto.FromString(duration_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(duration)
    f = descriptor_pb2.FieldDescriptorProto
    data = descriptor_pb2.FileDescriptorProto(
        name="aiodiscovery/xds_data_orca_v3.proto", package="xds.data.orca.v3", syntax="proto3"
    )
    report = data.message_type.add(name="OrcaLoadReport")
    scalars = (
        ("cpu_utilization", 1, f.TYPE_DOUBLE),
        ("mem_utilization", 2, f.TYPE_DOUBLE),
        # Deprecated upstream for rps_fractional; kept so that old senders still decode.
        ("rps", 3, f.TYPE_UINT64),
        ("rps_fractional", 6, f.TYPE_DOUBLE),
        ("eps", 7, f.TYPE_DOUBLE),
        ("application_utilization", 9, f.TYPE_DOUBLE),
    )
    for name, number, kind in scalars:
        report.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    for name, number in (("request_cost", 4), ("utilization", 5), ("named_metrics", 8)):
        # A proto3 map is a repeated nested entry message marked map_entry.
        entry_name = "".join(part.title() for part in name.split("_")) + "Entry"
        entry = report.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=f.TYPE_DOUBLE, label=f.LABEL_OPTIONAL)
        report.field.add(
            name=name,
            number=number,
            type=f.TYPE_MESSAGE,
            type_name=f".xds.data.orca.v3.OrcaLoadReport.{entry_name}",
            label=f.LABEL_REPEATED,
        )
    pool.Add(data)
    service = descriptor_pb2.FileDescriptorProto(
        name="aiodiscovery/xds_service_orca_v3.proto",
        package="xds.service.orca.v3",
        syntax="proto3",
        dependency=[duration.name],
    )
    request = service.message_type.add(name="OrcaLoadReportRequest")
    request.field.add(
        name="report_interval",
        number=1,
        type=f.TYPE_MESSAGE,
        type_name=".google.protobuf.Duration",
        label=f.LABEL_OPTIONAL,
    )
    request.field.add(
        name="request_cost_names", number=2, type=f.TYPE_STRING, label=f.LABEL_REPEATED
    )
    pool.Add(service)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("xds.data.orca.v3.OrcaLoadReport")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("xds.service.orca.v3.OrcaLoadReportRequest")
        ),
    )


def encode_report(report: LoadReport) -> bytes:
    """The wire bytes of ``report`` (an ``OrcaLoadReport`` message)."""
    message = messages()[0]()
    for name, attribute in _SCALARS:
        setattr(message, name, getattr(report, attribute))
    for name in _MAPS:
        getattr(message, name).update(getattr(report, name))
    data: bytes = message.SerializeToString(deterministic=True)
    return data


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def decode_report(data: bytes) -> LoadReport | None:
    """The report in ``data``, or ``None`` if it is not an ``OrcaLoadReport``.

    NaN and infinite numbers count as not reported (0); the deprecated integer ``rps`` stands in
    for ``qps`` when ``rps_fractional`` is absent.
    """
    message = messages()[0]()
    try:
        message.ParseFromString(data)
    except (DecodeError, TypeError, ValueError):
        return None
    values = {attribute: _finite(getattr(message, name)) for name, attribute in _SCALARS}
    if not values["qps"] and message.rps:
        values["qps"] = float(message.rps)
    maps = {}
    for name in _MAPS:
        entries = getattr(message, name)
        maps[name] = MappingProxyType({k: v for k, v in entries.items() if math.isfinite(v)})
    return LoadReport(
        cpu_utilization=values["cpu_utilization"],
        mem_utilization=values["mem_utilization"],
        application_utilization=values["application_utilization"],
        qps=values["qps"],
        eps=values["eps"],
        utilization=maps["utilization"],
        named_metrics=maps["named_metrics"],
        request_cost=maps["request_cost"],
    )
