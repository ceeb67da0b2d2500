"""The ADS stream: state-of-the-world xDS v3, every resource type over one stream per client.

Per type, a client names the resources it wants; the stream answers with every one of them
that exists (a Listener or Cluster missing from an answer does not exist, as the protocol says),
each answer with the catalog's generation as its version and a nonce of its own. The client
ACKs an answer by echoing its nonce with its version, or NACKs it with the version it still uses
and an error: a NACK is logged and counted, and the client keeps the last version it accepted;
the stream sends a new answer only when something changes again. A request that echoes a nonce
older than the last one sent for its type is stale (the client has not seen the newest answer
yet) and is ignored, as go-control-plane does: the client repeats its subscription when it
ACKs.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from .._logsafe import safe
from .catalog import Catalog
from .resources import TYPES
from .stats import XdsNack, XdsStreamStatistics

__all__ = ["AdsService", "Counters"]

logger = logging.getLogger("aiodiscovery.xds")


@dataclass
class Counters:
    """What every stream of a server has done, for :class:`XdsStatistics`."""

    streams_opened: int = 0
    responses: int = 0
    acks: int = 0
    nacks: int = 0
    last_nack: XdsNack | None = None
    open: dict[int, _Stream] = field(default_factory=dict)


@dataclass
class _Subscription:
    names: set[str] = field(default_factory=set)
    requested: bool = False
    nonce: str = ""
    version: str = ""
    acked: str = ""
    # name -> serialized resource, as last sent (None: nothing sent yet).
    sent: dict[str, bytes] | None = None


class _Stream:
    """One client's ADS stream: its subscriptions, and what it was last sent."""

    def __init__(self, catalog: Catalog, counters: Counters, peer: str) -> None:
        self.catalog = catalog
        self.counters = counters
        self.peer = peer
        self.node = ""
        self.subs = {type_url: _Subscription() for type_url in TYPES}
        self.held: set[str] = set()
        self._nonces = itertools.count(1)
        self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    def statistics(self) -> XdsStreamStatistics:
        return XdsStreamStatistics(
            node=self.node,
            peer=self.peer,
            subscribed={t.rsplit(".", 1)[-1]: tuple(sorted(s.names)) for t, s in self.subs.items()},
            acked={t.rsplit(".", 1)[-1]: s.acked for t, s in self.subs.items() if s.acked},
        )

    # -- requests ---------------------------------------------------------------------------

    def handle(self, request: Any) -> None:
        if request.node.id:
            self.node = request.node.id
        sub = self.subs.get(request.type_url)
        if sub is None:
            logger.debug("xds: %s asked for unknown type %s", self.peer, safe(request.type_url))
            return
        if request.response_nonce:
            if request.response_nonce != sub.nonce:
                return
            if request.HasField("error_detail") and request.error_detail.code != 0:
                self._nack(request, sub)
            else:
                sub.acked = request.version_info
                self.counters.acks += 1
        sub.requested = True
        names = set(request.resource_names)
        if names != sub.names:
            old, sub.names = sub.names, names
            for name in names - old:
                self._hold(name)
            for name in old - names:
                self._let_go(name)
        self.wake()

    def _nack(self, request: Any, sub: _Subscription) -> None:
        record = XdsNack(
            node=self.node,
            type=request.type_url.rsplit(".", 1)[-1],
            version=sub.version,
            kept=request.version_info,
            error=request.error_detail.message,
        )
        self.counters.nacks += 1
        self.counters.last_nack = record
        logger.warning(
            "xds: %s (%s) rejected %s version %s, keeps version %s: %s",
            safe(record.node),
            safe(self.peer),
            record.type,
            record.version,
            safe(record.kept) or "none",
            safe(record.error),
        )

    def _hold(self, name: str) -> None:
        # Several types name the same service: the stream holds its source once.
        if name not in self.held and self.catalog.acquire(name) is not None:
            self.held.add(name)

    def _let_go(self, name: str) -> None:
        if name in self.held and not any(name in s.names for s in self.subs.values()):
            self.held.discard(name)
            self.catalog.release(name)

    def close(self) -> None:
        for name in self.held:
            self.catalog.release(name)
        self.held.clear()

    # -- responses --------------------------------------------------------------------------

    async def responses(self) -> AsyncIterator[Any]:
        while True:
            self._wake = anyio.Event()
            for type_url, sub in self.subs.items():
                response = self._response(type_url, sub)
                if response is not None:
                    yield response
            await self._wake.wait()

    def _response(self, type_url: str, sub: _Subscription) -> Any:
        if not sub.requested:
            return None
        current: dict[str, Any] = {}
        for name in sorted(sub.names):
            source = self.catalog.get(name) if name in self.held else None
            if source is not None and not source.loaded and not source.failed:
                # Say nothing until it is known: an answer without it would mean "no such
                # resource", and the client would give up on the service.
                return None
            if source is not None and source.loaded:
                current[name] = source.resources[type_url]
        serialized = {name: r.SerializeToString(deterministic=True) for name, r in current.items()}
        if serialized == sub.sent:
            return None
        sub.sent = serialized
        sub.version = str(self.catalog.generation)
        sub.nonce = str(next(self._nonces))
        self.counters.responses += 1
        response = discovery_pb2.DiscoveryResponse(
            version_info=sub.version, type_url=type_url, nonce=sub.nonce
        )
        for resource in current.values():
            response.resources.add().Pack(resource)
        return response


class AdsService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """``envoy.service.discovery.v3.AggregatedDiscoveryService`` over a :class:`Catalog`."""

    def __init__(self, catalog: Catalog, counters: Counters) -> None:
        self.catalog = catalog
        self.counters = counters
        self._ids = itertools.count()

    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> None:
        stream = _Stream(self.catalog, self.counters, context.peer())
        key = next(self._ids)
        self.counters.streams_opened += 1
        self.counters.open[key] = stream
        self.catalog.add_listener(stream.wake)
        try:
            async with anyio.create_task_group() as task_group:

                async def send() -> None:
                    async for response in stream.responses():
                        await context.write(response)

                task_group.start_soon(send)
                async for request in request_iterator:
                    stream.handle(request)
                # The client half-closed: nothing more to say to it.
                task_group.cancel_scope.cancel()
        finally:
            self.catalog.remove_listener(stream.wake)
            del self.counters.open[key]
            stream.close()
