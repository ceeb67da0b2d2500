"""gRPC's interop TestService (``grpc.testing``), compiled at test time, and a server for it.

The server implements what ``doc/interop-test-descriptions.md`` in grpc/grpc asks of the
server features the cases use: EmptyCall, UnaryCall, StreamingInputCall, StreamingOutputCall,
FullDuplexCall, Echo Status and Echo Metadata. ``UnimplementedCall`` is left unimplemented.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import grpc
import grpc.aio

__all__ = ["ECHO_INITIAL", "ECHO_TRAILING", "TestServiceServer", "compile_service"]

PROTO = Path(__file__).with_name("interop.proto")
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"


def compile_service(out: Path) -> tuple[ModuleType, ModuleType]:
    """Compile the service into ``out``; return its ``_pb2`` and ``_pb2_grpc`` modules."""
    from grpc_tools import protoc  # noqa: PLC0415

    argv = [
        "protoc",
        f"-I{PROTO.parent}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("interop_pb2"), importlib.import_module("interop_pb2_grpc")
    finally:
        sys.path.remove(str(out))


class TestServiceServer:
    """A grpc.aio server of ``grpc.testing.TestService`` on a free loopback port."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str, pb2: ModuleType, pb2_grpc: ModuleType) -> None:
        self.name = name
        self.calls = 0
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        servicer = _servicer(self, pb2, pb2_grpc)
        pb2_grpc.add_TestServiceServicer_to_server(servicer, self.server)

    async def __aenter__(self) -> TestServiceServer:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)


def _servicer(owner: TestServiceServer, pb2: ModuleType, pb2_grpc: ModuleType) -> Any:
    async def echo_metadata(context: Any) -> None:
        """Echo Metadata: the two keys go back, as initial and as trailing metadata."""
        received = dict(context.invocation_metadata())
        if ECHO_INITIAL in received:
            await context.send_initial_metadata(((ECHO_INITIAL, received[ECHO_INITIAL]),))
        if ECHO_TRAILING in received:
            context.set_trailing_metadata(((ECHO_TRAILING, received[ECHO_TRAILING]),))

    async def echo_status(request: Any, context: Any) -> None:
        """Echo Status: a request carrying response_status ends the call with it."""
        if request.HasField("response_status"):
            status = request.response_status
            await context.abort(_status_code(status.code), status.message)

    def payload(size: int) -> Any:
        return pb2.Payload(body=bytes(size))

    class Servicer(pb2_grpc.TestServiceServicer):  # type: ignore[misc, name-defined]
        async def EmptyCall(self, request: Any, context: Any) -> Any:
            owner.calls += 1
            return pb2.Empty()

        async def UnaryCall(self, request: Any, context: Any) -> Any:
            owner.calls += 1
            await echo_metadata(context)
            await echo_status(request, context)
            return pb2.SimpleResponse(payload=payload(request.response_size))

        async def StreamingInputCall(self, requests: AsyncIterator[Any], context: Any) -> Any:
            owner.calls += 1
            size = 0
            async for request in requests:
                size += len(request.payload.body)
            return pb2.StreamingInputCallResponse(aggregated_payload_size=size)

        async def StreamingOutputCall(self, request: Any, context: Any) -> AsyncIterator[Any]:
            owner.calls += 1
            await echo_status(request, context)
            for parameters in request.response_parameters:
                await _pause(parameters.interval_us)
                yield pb2.StreamingOutputCallResponse(payload=payload(parameters.size))

        async def FullDuplexCall(
            self, requests: AsyncIterator[Any], context: Any
        ) -> AsyncIterator[Any]:
            owner.calls += 1
            await echo_metadata(context)
            async for request in requests:
                await echo_status(request, context)
                for parameters in request.response_parameters:
                    await _pause(parameters.interval_us)
                    yield pb2.StreamingOutputCallResponse(payload=payload(parameters.size))

    return Servicer()


def _status_code(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a numeric status code (UNKNOWN for one gRPC does not have)."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


async def _pause(interval_us: int) -> None:
    if interval_us > 0:
        await anyio.sleep(interval_us / 1e6)
