"""Registrar: keep one endpoint registered in etcd for exactly as long as a block runs.

::

    async with Registrar(client, "foo/bar/my-service", Endpoint("10.0.0.5:50051"), ttl=10) as reg:
        await server.wait_for_termination()

The key is written under the lease of a :class:`~aiodiscovery.LeaseKeeper`: a private one (``ttl=``)
or one shared with other Registrars (``lease=``). A watch on the key (:mod:`.leasedkey`) notices
anyone deleting it, and the key is written again; when the lease is lost, it is written again under
the keeper's new one. With ``health_check=`` the key is written only while the server's own gRPC
health service says SERVING (:mod:`.health`). Leaving revokes the private lease, or deletes the
key from a shared one, so resolvers drop the endpoint at once instead of one TTL later.

The background work runs in the keeper's task group, not in the caller's task: Registrars may be
entered and left in any order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import grpc

from .._codec.endpoint import Endpoint, encode_endpoint, parse_target
from .._codec.keys import check_key, check_ttl
from .._etcd.client import EtcdClient
from .._exceptions import EtcdUnavailableError
from .._logsafe import safe
from .._metrics import track
from .._taskgroup import EnterOnce
from .health import DEFAULT_HEALTH_GRACE, HealthWatch
from .keepalive import lease_text
from .lease import (
    DEFAULT_REVOKE_TIMEOUT,
    DEFAULT_TTL,
    KeeperLink,
    LeaseKeeper,
    check_lifetimes,
)
from .leasedkey import LeasedKey
from .registration import RegistrarState, Registration

__all__ = [
    "DEFAULT_REVOKE_TIMEOUT",
    "DEFAULT_TTL",
    "Registrar",
    "RegistrarState",
    "RegistrarStatistics",
]

logger = logging.getLogger("aiodiscovery.registrar")


@dataclass(frozen=True, slots=True)
class RegistrarStatistics:
    """A snapshot of what a :class:`Registrar` has done, from :meth:`Registrar.statistics`.

    ``registrations`` counts successful puts, the first one included; ``re_registrations`` those
    after it (after a loss, or the server's return to SERVING). The lease figures
    (``leases_granted``, ``revokes``, ``keepalive_*``, ``last_refresh``, ``ttl``) are the
    :class:`~aiodiscovery.LeaseKeeper`'s, shared by every Registrar on a shared lease
    (``shared_lease``). ``keepalive_streams`` counts ``LeaseKeepAlive`` streams opened,
    ``keepalives_sent`` the refreshes sent on them and ``keepalive_round_trips`` the replies that
    refreshed the lease. ``last_refresh`` is the wall-clock time (``time.time()``) of the last grant
    or refresh. ``health`` is the last health status heard (``"SERVING"``, ``"NOT_SERVING"``,
    ``"SERVICE_UNKNOWN"``, ``"UNKNOWN"``, ``"UNREACHABLE"`` or ``"UNIMPLEMENTED"``; ``None``
    without ``health_check``), and ``health_deregistrations`` counts keys deleted because of it.
    """

    state: RegistrarState
    key: str
    lease_id: int | None
    ttl: int | None
    registrations: int
    re_registrations: int
    losses: int
    last_loss_reason: str | None
    leases_granted: int
    puts: int
    revokes: int
    key_reads: int
    keepalive_streams: int
    keepalives_sent: int
    keepalive_round_trips: int
    watch_streams: int
    overwrites: int
    last_refresh: float | None
    deletes: int = 0
    shared_lease: bool = False
    health: str | None = None
    health_streams: int = 0
    health_deregistrations: int = 0

    @property
    def requests(self) -> int:
        """Every request sent to etcd: unary calls, keep-alive messages and watch creations."""
        return (
            self.leases_granted
            + self.puts
            + self.deletes
            + self.revokes
            + self.key_reads
            + self.keepalives_sent
            + self.watch_streams
        )


class Registrar:
    """Keeps ``endpoint`` registered under ``target`` in etcd while an ``async with`` block runs.

    ``target`` names the service (``"foo/bar/my-service"`` or ``"etcd:///foo/bar/my-service"``);
    ``endpoint`` is an :class:`Endpoint` or an address string, with ``metadata`` for the latter.
    The key defaults to ``<service>/<addr>`` (``foo/bar/my-service/10.0.0.5:50051``); ``key``
    overrides it and must lie under the service prefix. The value is written in the Go client's
    format, under a lease of ``ttl`` seconds (default 10) of a private :class:`LeaseKeeper`, or
    under the lease of the entered :class:`LeaseKeeper` given as ``lease`` (then without ``ttl``).

    Entering returns once the key is written; if etcd does not grant the lease and take the put
    within ``start_timeout`` seconds (default: the client's request timeout) it raises
    :class:`EtcdUnavailableError`. Leaving revokes the private lease (or deletes the key from a
    shared one) within ``revoke_timeout`` seconds, also on error or cancellation; one that fails
    is logged and the key goes when the lease's TTL runs out.

    ``health_check`` names a service of the server's standard gRPC health service (``""``: the
    whole server), followed with a ``grpc.health.v1.Health/Watch`` stream to the endpoint's address
    (or on ``health_channel``, a channel of yours, e.g. a secure one): the key is written only
    while the status is SERVING. Entering then also waits for the first status and raises
    :class:`HealthCheckError` if the server has no health service; if the server is not SERVING
    yet, it returns in state ``UNHEALTHY`` and writes the key once it is. A lost health stream is
    reopened at once; the last status holds for ``health_grace`` seconds, then the endpoint counts
    as not serving until the server answers again.

    A Registrar can be entered once; Registrars may be left in any order, from any task.
    """

    def __init__(
        self,
        client: EtcdClient,
        target: str,
        endpoint: Endpoint | str,
        *,
        ttl: int | None = None,
        key: str | None = None,
        metadata: Any = None,
        start_timeout: float | None = None,
        revoke_timeout: float = DEFAULT_REVOKE_TIMEOUT,
        lease: LeaseKeeper | None = None,
        health_check: str | None = None,
        health_channel: grpc.aio.Channel | None = None,
        health_grace: float = DEFAULT_HEALTH_GRACE,
    ) -> None:
        if ttl is not None:
            check_ttl(ttl)
        check_lifetimes("Registrar", client, start_timeout, revoke_timeout)
        self.client = client
        self.target = target
        self.prefix = parse_target(target)
        self.endpoint = _as_endpoint(endpoint, metadata)
        self.key = check_key(self.prefix, self.prefix + self.endpoint.addr if key is None else key)
        self.start_timeout = client.timeout if start_timeout is None else start_timeout
        self.revoke_timeout = revoke_timeout
        self._keeper = _keeper_for(client, lease, ttl, self.start_timeout, revoke_timeout)
        self._private = lease is None
        self.ttl = self._keeper.ttl
        if health_check is None and health_channel is not None:
            raise ValueError("health_channel= is for health_check=; give a service name too")
        self._health = (
            None
            if health_check is None
            else HealthWatch(
                self.endpoint.addr,
                health_check,
                channel=health_channel,
                grace=health_grace,
                label=safe(self.key),
            )
        )
        # Encoding now makes metadata that JSON cannot hold fail here, not in the background.
        self._key = LeasedKey(
            client, self.key, encode_endpoint(self.endpoint), timeout=self._keeper.attempt_timeout
        )
        self._link = KeeperLink(self._keeper, self, self.key)
        self._work = Registration(self._key, self._link, self._health, self.endpoint.addr)
        self._once = EnterOnce("Registrar")
        self._shut_down = False

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> RegistrarState:
        """The current :class:`RegistrarState`."""
        return self._work.state

    @property
    def registered(self) -> bool:
        """Whether the key is written under a lease that is being kept alive."""
        return self._work.state is RegistrarState.REGISTERED

    @property
    def lease(self) -> LeaseKeeper:
        """The :class:`LeaseKeeper` whose lease the key is written under."""
        return self._keeper

    @property
    def lease_id(self) -> int | None:
        """The lease of the current registration, or of the lost one while re-registering.

        ``None`` before entering and after leaving.
        """
        work = self._work
        if work.state is RegistrarState.CLOSED:
            return None
        return work.grant.id if work.grant is not None else self._keeper.lease_id

    async def wait_registered(self) -> None:
        """Return once the endpoint is registered (at once if it is now).

        Raises :class:`RuntimeError` if the registrar closes first. Wrap it in
        ``anyio.fail_after`` to bound the wait.
        """
        await self._work.wait_until(lambda: self._work.state is RegistrarState.REGISTERED)

    async def wait_lost(self) -> None:
        """Return once the registration is lost: at once if it is lost now, else at the next loss.

        A deregistration for the server's health is not a loss. Raises :class:`RuntimeError` if
        the registrar closes first.
        """
        work = self._work
        losses = work.losses
        await work.wait_until(lambda: work.state is RegistrarState.LOST or work.losses != losses)

    def statistics(self) -> RegistrarStatistics:
        """A snapshot of the registrar's counters and current lease."""
        lease = self._keeper.statistics()
        health = self._health
        work = self._work
        return RegistrarStatistics(
            state=work.state,
            key=self.key,
            lease_id=self.lease_id,
            ttl=lease.ttl,
            registrations=work.registrations,
            re_registrations=max(0, work.registrations - 1),
            losses=work.losses,
            last_loss_reason=work.last_loss_reason,
            leases_granted=lease.grants,
            puts=self._key.puts,
            revokes=lease.revokes,
            key_reads=self._key.key_reads,
            keepalive_streams=lease.keepalive_streams,
            keepalives_sent=lease.keepalives_sent,
            keepalive_round_trips=lease.keepalive_round_trips,
            watch_streams=self._key.watch_streams,
            overwrites=self._key.overwrites,
            last_refresh=lease.last_refresh,
            deletes=self._key.deletes,
            shared_lease=not self._private,
            health=health.status if health is not None else None,
            health_streams=health.streams if health is not None else 0,
            health_deregistrations=work.health_deregistrations,
        )

    def __repr__(self) -> str:
        return (
            f"<Registrar {self.key!r} addr={self.endpoint.addr!r} {self._work.state.value} "
            f"lease={lease_text(self.lease_id)} ttl={self.ttl}>"
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._once.enter()
        keeper = self._keeper
        deadline = anyio.current_time() + self.start_timeout
        # Attached first, so that the keeper's log lines name the key from the start.
        self._link.attach()
        try:
            if self._private:
                keeper.start_timeout = self.start_timeout
                try:
                    await keeper.__aenter__()
                except EtcdUnavailableError as exc:
                    raise EtcdUnavailableError(
                        f"could not register {self.key!r}: {exc}",
                        code=exc.code,
                        details=exc.details,
                    ) from exc
            else:
                self._link.check_open()
            health = self._health
            if health is not None:
                await health.start(deadline, self.start_timeout)
            if health is None or health.serving:
                await self._work.first_put(deadline)
            else:
                self._work.set_state(RegistrarState.UNHEALTHY)
                logger.info(
                    "not registering %s yet: health status %s", safe(self.key), health.status
                )
            self._work.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._shut()
            raise
        track(self, "registrar")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._shut()

    async def _shut(self) -> None:
        """Stop the background work, then take the key away (once); shielded by the callers."""
        if self._shut_down:
            return
        self._shut_down = True
        work = self._work
        await work.stop()
        if self._health is not None:
            await self._health.close()
        keeper = self._keeper
        if self._private:
            keeper.revoke_timeout = self.revoke_timeout
            lease = keeper.lease_id
            if await self._link.close_keeper() and work.attempted is not None:
                logger.info("unregistered %s (lease %x revoked)", safe(self.key), lease)
        elif not keeper.closed:
            await work.delete(self.revoke_timeout)
        self._link.detach()


def _keeper_for(
    client: EtcdClient,
    lease: LeaseKeeper | None,
    ttl: int | None,
    start_timeout: float,
    revoke_timeout: float,
) -> LeaseKeeper:
    if lease is None:
        return LeaseKeeper(
            client,
            ttl=DEFAULT_TTL if ttl is None else ttl,
            start_timeout=start_timeout,
            revoke_timeout=revoke_timeout,
        )
    if not isinstance(lease, LeaseKeeper):
        raise TypeError(f"lease must be a LeaseKeeper, got {type(lease).__name__}")
    if lease.client is not client:
        raise ValueError("the LeaseKeeper given as lease= belongs to another client")
    if ttl is not None and ttl != lease.ttl:
        raise ValueError(
            f"ttl={ttl} differs from the shared lease's ttl={lease.ttl}: the TTL is the "
            "LeaseKeeper's, leave ttl= out"
        )
    return lease


def _as_endpoint(endpoint: Endpoint | str, metadata: Any) -> Endpoint:
    if isinstance(endpoint, str):
        return Endpoint(endpoint, metadata)
    if not isinstance(endpoint, Endpoint):
        raise TypeError(f"endpoint must be an Endpoint or an address string, got {endpoint!r}")
    if metadata is None:
        return endpoint
    if endpoint.metadata is not None:
        raise ValueError("give metadata either in the Endpoint or as metadata=, not both")
    return Endpoint(endpoint.addr, metadata)
