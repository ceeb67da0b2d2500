"""The catalog: one source per service a client subscribed to, each following its registry prefix.

A source lives while at least one ADS stream subscribes to its name: the first subscription
starts a :class:`Watcher` on the name's prefix (in the catalog's task group), the last one to
leave stops it. Each snapshot of the endpoint set rebuilds the service's ClusterLoadAssignment;
each change of anything a client may hold bumps the catalog's generation, which is the version
the ADS streams send, and wakes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._backoff import Backoff
from .._codec.endpoint import parse_target
from .._codec.endpointset import EndpointSet
from .._etcd.client import EtcdClient
from .._logsafe import safe
from .._naming.watcher import Watcher
from .policy import XdsPolicy
from .resources import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTE,
    build_assignment,
    build_cluster,
    build_listener,
    build_route,
)

__all__ = ["Catalog", "Source", "Spawn"]

# Starts a task in the server's task group: func, its arguments, and name=.
Spawn = Callable[..., None]

logger = logging.getLogger("aiodiscovery.xds")


@dataclass
class Source:
    """One service's resources, as last built, and who holds them."""

    name: str
    client: EtcdClient
    policy: XdsPolicy
    refs: int = 0
    loaded: bool = False
    # Its first load failed: answers go out without it (it does not exist, for now) rather
    # than waiting for it and holding up every other service of the same streams.
    failed: bool = False
    endpoints: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    snapshot: EndpointSet = field(default_factory=EndpointSet)

    def build_policy_resources(self) -> None:
        self.resources[LISTENER] = build_listener(self.name)
        self.resources[ROUTE] = build_route(self.name, self.policy)
        self.resources[CLUSTER] = build_cluster(self.name, self.policy)


class Catalog:
    """The services served, the clients and policies they come from, and who is waiting."""

    def __init__(
        self,
        spawn: Spawn,
        client: EtcdClient | None,
        policy: XdsPolicy,
        services: Mapping[str, tuple[EtcdClient | None, XdsPolicy | None]],
        max_services: int,
    ) -> None:
        self._spawn = spawn
        self._client = client
        self._policy = policy
        self._services = dict(services)
        self._max_services = max_services
        self._sources: dict[str, Source] = {}
        self._listeners: set[Callable[[], None]] = set()
        self._refused: set[str] = set()
        #: Bumped by every change a client may see; the version the streams send.
        self.generation = 1

    # -- configuration ----------------------------------------------------------------------

    def configure(self, name: str, client: EtcdClient | None, policy: XdsPolicy | None) -> None:
        """Serve ``name`` from ``client`` (or the default) with ``policy`` (or the default)."""
        self._services[name] = (client, policy)
        source = self._sources.get(name)
        if source is None:
            return
        new_policy = policy or self._policy
        if new_policy != source.policy:
            source.policy = new_policy
            source.build_policy_resources()
            if source.loaded:
                # The health attribute's name is the policy's too.
                self._load(source, source.snapshot)
            self._changed()
        if client is not None and client is not source.client:
            # Another registry: follow it from scratch.
            source.client = client
            source.scope.cancel()
            source.scope = anyio.CancelScope()
            self._spawn(self._follow, source, name=f"xds source {name}")

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a service this catalog can follow."""
        client, _ = self._services.get(name, (None, None))
        return (client or self._client) is not None and _valid(name)

    # -- subscriptions ----------------------------------------------------------------------

    def acquire(self, name: str) -> Source | None:
        """Hold ``name``'s source, starting it if new; None if the name is not served."""
        source = self._sources.get(name)
        if source is None:
            if not self.serves(name):
                if name not in self._refused:
                    self._refused.add(name)
                    logger.warning(
                        "xds: no service %s to serve (not a registry prefix)", safe(name)
                    )
                return None
            if len(self._sources) >= self._max_services:
                # Each service is an etcd watch: clients must not open them without bound.
                logger.warning(
                    "xds: not serving %s: %d services are served already",
                    safe(name),
                    len(self._sources),
                )
                return None
            client, policy = self._services.get(name, (None, None))
            found = client or self._client
            assert found is not None
            source = Source(name, found, policy or self._policy)
            source.build_policy_resources()
            self._sources[name] = source
            self._spawn(self._follow, source, name=f"xds source {name}")
        source.refs += 1
        return source

    def release(self, name: str) -> None:
        """Let go of ``name``; its watch stops when nobody holds it any more."""
        source = self._sources.get(name)
        if source is None:
            return
        source.refs -= 1
        if source.refs <= 0:
            del self._sources[name]
            source.scope.cancel()

    def get(self, name: str) -> Source | None:
        """The live source of ``name``, if one is held."""
        return self._sources.get(name)

    @property
    def sources(self) -> Mapping[str, Source]:
        """The sources held now, by name."""
        return self._sources

    def add_listener(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` after every change."""
        self._listeners.add(wake)

    def remove_listener(self, wake: Callable[[], None]) -> None:
        """Stop calling ``wake()``."""
        self._listeners.discard(wake)

    def _changed(self) -> None:
        self.generation += 1
        for wake in list(self._listeners):
            wake()

    # -- following the registry ---------------------------------------------------------------

    async def _follow(self, source: Source) -> None:
        backoff = Backoff(initial=0.1, cap=5.0)
        with source.scope:
            while True:
                try:
                    async with Watcher(source.client, source.name) as watcher:
                        async for snapshot in watcher.snapshots():
                            self._load(source, snapshot)
                            backoff.reset()
                except Exception as exc:
                    logger.warning(
                        "xds: following %s failed, retrying: %s", safe(source.name), safe(str(exc))
                    )
                    if not source.loaded and not source.failed:
                        source.failed = True
                        self._changed()
                await anyio.sleep(backoff.next_delay())

    def _load(self, source: Source, snapshot: EndpointSet) -> None:
        source.snapshot = snapshot
        assignment = build_assignment(source.name, snapshot, source.policy)
        for key in assignment.skipped.keys() - source.skipped.keys():
            logger.warning(
                "xds: %s left out of %s: %s",
                safe(key),
                safe(source.name),
                safe(assignment.skipped[key]),
            )
        source.skipped = assignment.skipped
        source.endpoints = assignment.endpoints
        old = source.resources.get(ENDPOINTS)
        source.resources[ENDPOINTS] = assignment.message
        if not source.loaded or old != assignment.message:
            source.loaded = True
            self._changed()


def _valid(name: str) -> bool:
    try:
        parse_target(name)
    except (TypeError, ValueError):
        return False
    return True
