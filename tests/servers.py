"""Real grpc.aio test servers on loopback ports, with generic handlers (no protoc needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio

SERVICE = "test.Echo"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class EchoServer:
    """A gRPC server that answers with its own name, so tests can see where each call went.

    - ``Unary``: ``b"x"`` -> ``b"<name>:x"``
    - ``Hold``: blocks until :attr:`release` is set (or the call is cancelled), then answers
    - ``Count`` (unary-stream): ``b"3"`` -> ``b"<name>:0"``, ``b"<name>:1"``, ``b"<name>:2"``
    - ``Join`` (stream-unary): joins the requests with ``+``
    - ``Chat`` (stream-stream): echoes each request prefixed with the name
    - ``Meta``: returns the caller's ``x-test`` metadata and sets it as trailing metadata
    """

    def __init__(self, name: str, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.name = name
        self.calls = 0
        self.cancelled = 0
        self.holding = 0
        self.release = anyio.Event()
        self.server = grpc.aio.server(interceptors=list(interceptors) or None)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Hold": grpc.unary_unary_rpc_method_handler(self._hold),
            "Count": grpc.unary_stream_rpc_method_handler(self._count),
            "Join": grpc.stream_unary_rpc_method_handler(self._join),
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat),
            "Meta": grpc.unary_unary_rpc_method_handler(self._meta),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )

    def _tag(self, payload: bytes) -> bytes:
        return self.name.encode() + b":" + payload

    async def _unary(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        return self._tag(request)

    async def _hold(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        self.holding += 1
        try:
            await self.release.wait()
        except BaseException:
            self.cancelled += 1
            raise
        finally:
            self.holding -= 1
        return self._tag(request)

    async def _count(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.calls += 1
        for i in range(int(request)):
            yield self._tag(str(i).encode())

    async def _join(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        self.calls += 1
        return self._tag(b"+".join([r async for r in requests]))

    async def _chat(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.calls += 1
        async for request in requests:
            yield self._tag(request)

    async def _meta(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        value = dict(context.invocation_metadata()).get("x-test", "")
        context.set_trailing_metadata((("x-echo", value),))
        return self._tag(value.encode())

    async def start(self) -> EchoServer:
        await self.server.start()
        return self

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)

    async def __aenter__(self) -> EchoServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.stop(None)
