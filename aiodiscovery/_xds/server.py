"""XdsServer: an xDS v3 control plane (ADS) whose resources come from the etcd naming registry.

Any gRPC client with xDS support (grpcio, grpc-go, grpc-java, grpc C++) whose bootstrap names
this server resolves ``xds:///foo/bar/my-service`` to the endpoints registered under
``foo/bar/my-service/``, and balances, retries and ejects outliers itself, as the service's
:class:`XdsPolicy` says. The server follows a service only while some client subscribes to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import grpc
import grpc.aio

from .._etcd.client import EtcdClient
from .._taskgroup import TaskHost
from .policy import XdsPolicy
from .stats import XdsServiceStatistics, XdsStatistics

if TYPE_CHECKING:
    from .ads import Counters
    from .catalog import Catalog

__all__ = ["XdsServer"]

logger = logging.getLogger("aiodiscovery.xds")
_EXTRA = "the xDS server needs xds-protos: pip install 'aiodiscovery[xds]'"


class XdsServer:
    """An ADS server on ``listen`` (loopback by default) serving the registry behind ``client``.

    ``async with XdsServer(client) as server:`` starts it (or ``await server.start()`` and, from
    any task, ``await server.close()``); :attr:`address` is where it listens. Every service a
    client asks for (``xds:///foo/bar/my-service``) is served from ``client`` with ``policy``;
    :meth:`serve` sets another client or policy for one service, also while running (clients
    get the new Cluster and Route at once). Without a ``client``, only services given to
    :meth:`serve` exist. ``credentials`` (``grpc.ssl_server_credentials(...)``) serve over TLS.
    Each service followed is an etcd watch, held while a client subscribes to it; at most
    ``max_services`` at once (a name asked for beyond that does not exist, with a warning).

    :meth:`bootstrap` writes the JSON a gRPC client's ``GRPC_XDS_BOOTSTRAP_CONFIG`` takes.
    """

    def __init__(
        self,
        client: EtcdClient | None = None,
        *,
        listen: str = "127.0.0.1:0",
        credentials: grpc.ServerCredentials | None = None,
        policy: XdsPolicy | None = None,
        services: Mapping[str, XdsPolicy] | None = None,
        max_services: int = 1000,
    ) -> None:
        if policy is not None and not isinstance(policy, XdsPolicy):
            raise TypeError("policy must be an aiodiscovery.XdsPolicy")
        self.client = client
        self.listen = listen
        self.credentials = credentials
        self.policy = policy or XdsPolicy()
        if not isinstance(max_services, int) or max_services < 1:
            raise ValueError(f"max_services must be a positive whole number, not {max_services!r}")
        self.max_services = max_services
        self._services: dict[str, tuple[EtcdClient | None, XdsPolicy | None]] = {
            name: (None, p) for name, p in (services or {}).items()
        }
        self._host = TaskHost(f"aiodiscovery xds server {listen}")
        self._server: grpc.aio.Server | None = None
        self._catalog: Catalog | None = None
        self._counters: Counters | None = None
        self._closed = False
        self.port = 0

    @property
    def address(self) -> str:
        """``host:port`` the server listens on (the port chosen once started)."""
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is started and not closed."""
        return self._server is not None and not self._closed

    def serve(
        self,
        name: str,
        *,
        client: EtcdClient | None = None,
        policy: XdsPolicy | None = None,
    ) -> None:
        """Serve the service ``name`` from ``client`` (default: the server's) with ``policy``
        (default: the server's); takes effect at once for clients already subscribed."""
        if policy is not None and not isinstance(policy, XdsPolicy):
            raise TypeError("policy must be an aiodiscovery.XdsPolicy")
        self._services[name] = (client, policy)
        if self._catalog is not None:
            self._catalog.configure(name, client, policy)

    @property
    def services(self) -> Mapping[str, tuple[EtcdClient | None, XdsPolicy | None]]:
        """What :meth:`serve` was told: name -> (client, policy), ``None`` for the defaults."""
        return dict(self._services)

    async def start(self) -> None:
        """Listen and serve; returns once the port is bound."""
        if self._server is not None or self._closed:
            raise RuntimeError("an XdsServer starts only once")
        try:
            from envoy.service.discovery.v3 import ads_pb2_grpc  # noqa: PLC0415

            from .ads import AdsService, Counters  # noqa: PLC0415
            from .catalog import Catalog  # noqa: PLC0415
        except ImportError as exc:
            raise RuntimeError(f"{_EXTRA} ({exc})") from exc
        await self._host.open()
        self._counters = Counters()
        self._catalog = Catalog(
            self._host.start_soon, self.client, self.policy, self._services, self.max_services
        )
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AdsService(self._catalog, self._counters), server
        )
        try:
            if self.credentials is None:
                self.port = server.add_insecure_port(self.listen)
            else:
                self.port = server.add_secure_port(self.listen, self.credentials)
            await server.start()
        except BaseException:
            await self._host.close()
            raise
        self._server = server
        self._host.start_soon(self._stop_with_the_loop, server, name="xds server guard")
        logger.info("xds: serving on %s", self.address)

    @staticmethod
    async def _stop_with_the_loop(server: grpc.aio.Server) -> None:
        # The in-process server is rarely closed by hand: when asyncio.run() ends, it cancels
        # every task, this one too, and the gRPC server must stop while its loop still runs
        # (grpc.aio can no longer stop it from __del__ once the loop is closed).
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await server.stop(None)

    async def close(self, grace: float | None = 1.0) -> None:
        """Stop serving: streams get ``grace`` seconds, then every watch stops."""
        if self._closed:
            return
        self._closed = True
        server = self._server
        if server is not None:
            await server.stop(grace)
        await self._host.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def bootstrap(self, *, node_id: str = "aiodiscovery", ca_file: str | None = None) -> str:
        """A gRPC xDS bootstrap (gRFC A27) naming this server, as JSON.

        Plaintext by default; with ``ca_file`` (a PEM file the client can read) the client
        connects with TLS and checks the server's certificate against it (gRFC A65).
        """
        creds: dict[str, Any] = {"type": "insecure"}
        if ca_file is not None:
            creds = {"type": "tls", "config": {"ca_certificate_file": ca_file}}
        document = {
            "xds_servers": [
                {
                    "server_uri": self.address,
                    "channel_creds": [creds],
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {"id": node_id},
        }
        return json.dumps(document, separators=(",", ":"))

    def statistics(self) -> XdsStatistics:
        """Versions, answers, ACKs and NACKs, the clients' streams and the services served."""
        counters, catalog = self._counters, self._catalog
        if counters is None or catalog is None:
            return XdsStatistics()
        services = {
            name: XdsServiceStatistics(name, s.refs, s.endpoints, dict(s.skipped))
            for name, s in catalog.sources.items()
        }
        return XdsStatistics(
            version=catalog.generation,
            streams_opened=counters.streams_opened,
            responses=counters.responses,
            acks=counters.acks,
            nacks=counters.nacks,
            last_nack=counters.last_nack,
            streams=tuple(s.statistics() for s in counters.open.values()),
            services=services,
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "closed" if self._closed else "new"
        s = self.statistics()
        return (
            f"<XdsServer {self.address} {state} services={len(s.services)} "
            f"streams={len(s.streams)} version={s.version} nacks={s.nacks}>"
        )
