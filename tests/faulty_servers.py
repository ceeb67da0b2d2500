"""Echo servers with the standard health service and faults a test can switch on and off."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from aiodiscovery import EtcdClient, Registrar

from .servers import EchoServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Attempt:
    """One call as the server saw it arrive: when (``time.monotonic()``) and its metadata."""

    method: str
    at: float
    metadata: dict[str, str]

    @property
    def previous_attempts(self) -> str | None:
        """Its ``grpc-previous-rpc-attempts`` header (gRFC A6), or None without one."""
        return self.metadata.get("grpc-previous-rpc-attempts")


class BreakableHealth(health_aio.HealthServicer):
    """The standard health servicer, whose ``Watch`` fails ``UNAVAILABLE`` while ``broken``."""

    broken = False

    async def Watch(self, request: Any, context: Any) -> None:
        if self.broken:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "health watch broken on purpose")
        await super().Watch(request, context)


class FaultyServer(EchoServer):
    """An :class:`EchoServer` with a real ``grpc.health.v1`` servicer and switchable faults.

    - ``fail_with``: every ``Unary``, ``Meta`` and ``Count`` call fails with that code
      (``Count`` after ``stream_before_failing`` messages), with the ``pushback`` (the
      ``grpc-retry-pushback-ms`` trailer) if set; without ``initial_metadata`` before any
      headers (a Trailers-Only response).
    - ``initial_metadata``: when not None, ``Unary`` and ``Count`` send these headers first,
      even an empty tuple (headers without entries).
    - ``attempts``: every ``Unary``, ``Meta`` and ``Count`` call as it arrived.
    - ``health``: the servicer (``await server.health.set("", NOT_SERVING)``), or None for a
      server without the health service.
    """

    def __init__(self, name: str, *, health: bool = True) -> None:
        super().__init__(name)
        self.fail_with: grpc.StatusCode | None = None
        self.pushback: str | None = None
        self.stream_before_failing = 0
        self.initial_metadata: tuple[tuple[str, str], ...] | None = None
        self.attempts: list[Attempt] = []
        self.health: BreakableHealth | None = None
        if health:
            self.health = BreakableHealth()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    def watchers(self, service: str = "") -> int:
        """``Health/Watch`` streams open on this server for ``service``."""
        assert self.health is not None
        return int(self.health._watcher_count_by_service.get(service, 0))

    async def set_health(self, status: int, service: str = "") -> None:
        assert self.health is not None
        await self.health.set(service, status)

    def _arrived(self, name: str, context: Any) -> None:
        self.calls += 1
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        self.attempts.append(Attempt(name, time.monotonic(), metadata))

    async def _headers(self, context: Any) -> None:
        if self.initial_metadata is not None:
            await context.send_initial_metadata(self.initial_metadata)

    def _failing(self) -> bool:
        return self.fail_with is not None

    async def _fail(self, context: Any) -> None:
        assert self.fail_with is not None
        if self.pushback is not None:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback),))
        await context.abort(self.fail_with, f"{self.name}: failing on purpose")

    async def _unary(self, request: bytes, context: Any) -> bytes:
        self._arrived("Unary", context)
        await self._headers(context)
        if self._failing():
            await self._fail(context)
        return self._tag(request)

    async def _meta(self, request: bytes, context: Any) -> bytes:
        if self._failing():
            self._arrived("Meta", context)
            await self._fail(context)
        return await super()._meta(request, context)

    async def _count(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self._arrived("Count", context)
        await self._headers(context)
        failing = self._failing()
        for i in range(int(request)):
            if failing and i == self.stream_before_failing:
                await self._fail(context)
            yield self._tag(str(i).encode())
        if failing:
            await self._fail(context)


@contextlib.asynccontextmanager
async def faulty_servers(count: int, *, health: bool = True) -> AsyncIterator[list[FaultyServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(FaultyServer(f"s{i}", health=health))
            for i in range(count)
        ]


@contextlib.asynccontextmanager
async def registered(
    client: EtcdClient, service: str, servers: Sequence[EchoServer]
) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(Registrar(client, service, server.address, ttl=5))
        yield
