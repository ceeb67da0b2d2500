"""Registrar: keep one endpoint registered under an etcd lease for exactly as long as a block runs.

::

    async with Registrar(client, "foo/bar/my-service", Endpoint("10.0.0.5:50051"), ttl=10) as reg:
        await server.wait_for_termination()

Entering grants a lease and writes the key under it; one long-lived ``LeaseKeepAlive`` stream
refreshes the lease every TTL/3 and a watch on the key notices anyone deleting it. Whatever
happens to etcd meanwhile, a lost lease or key is replaced by a new lease and a new put, with
jittered backoff, forever. Leaving the block revokes the lease, so resolvers drop the endpoint at
once instead of one TTL later.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import grpc
from aetcd import rpc
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint

from ._backoff import Backoff
from ._client import EtcdClient
from ._endpoint import Endpoint, encode_endpoint, parse_target
from ._exceptions import EtcdError, EtcdUnavailableError, LeaseNotFoundError
from ._keys import check_key, check_ttl
from ._rpc import close_call, rpc_step, translate_error
from ._taskgroup import exit_task_group
from ._watchstream import run_watch

__all__ = [
    "DEFAULT_REVOKE_TIMEOUT",
    "DEFAULT_TTL",
    "Registrar",
    "RegistrarState",
    "RegistrarStatistics",
]

logger = logging.getLogger("aiodiscovery.registrar")

T = TypeVar("T")

DEFAULT_TTL = 10
DEFAULT_REVOKE_TIMEOUT = 2.0
_RETRY_INITIAL = 0.05
# Low enough that a registration is back within about a second of etcd answering again, and
# jittered so that every service of a restarted cluster does not come back in the same instant.
_RETRY_CAP = 1.0
# Errors no retry can fix; at start they surface at once instead of after the whole timeout.
_PERMANENT_CODES = frozenset(
    {"INVALID_ARGUMENT", "OUT_OF_RANGE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)
# A request that takes longer than this cannot help keep a lease of the given TTL alive: the next
# one goes to another member instead (see _members).
_MIN_ATTEMPT = 0.5


class RegistrarState(enum.Enum):
    """Where a :class:`Registrar` stands."""

    #: The first lease grant and put are under way (``__aenter__`` has not returned yet).
    REGISTERING = "registering"
    #: The key is written under a lease that was granted or refreshed within its TTL.
    REGISTERED = "registered"
    #: The lease or the key was lost; a new lease and a new put are being retried with backoff.
    LOST = "lost"
    #: The block was left (or entering failed): the lease is revoked, nothing runs any more.
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RegistrarStatistics:
    """A snapshot of what a :class:`Registrar` has done, from :meth:`Registrar.statistics`.

    ``registrations`` counts successful puts, the first one included; ``re_registrations`` those
    after a loss. ``keepalives_sent`` and ``keepalive_round_trips`` count keep-alive messages on the
    stream and the replies that refreshed the lease. ``last_refresh`` is the wall-clock time
    (``time.time()``) of the last grant or successful refresh.
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

    @property
    def requests(self) -> int:
        """Every request sent to etcd: unary calls, keep-alive messages and watch creations."""
        return (
            self.leases_granted
            + self.puts
            + self.revokes
            + self.key_reads
            + self.keepalives_sent
            + self.watch_streams
        )


@dataclass(slots=True)
class _Counters:
    registrations: int = 0
    losses: int = 0
    grants: int = 0
    puts: int = 0
    revokes: int = 0
    key_reads: int = 0
    keepalive_streams: int = 0
    keepalives_sent: int = 0
    keepalive_round_trips: int = 0
    watch_streams: int = 0
    overwrites: int = 0


@dataclass(slots=True)
class _Session:
    """One lease and the put made under it; times are on anyio's monotonic clock."""

    lease: int
    ttl: int
    revision: int
    started: float
    next_refresh: float
    # The moment etcd may drop the lease unless a refresh got through: measured from when the
    # last successful request was *sent*, so that we never believe in a lease etcd already expired.
    expires: float
    overwrite_reported: bool = False


class _StreamBroken(Exception):
    """A keep-alive or watch stream stopped serving; a fresh one is needed."""


class _KeyDeleted(Exception):
    """The watch saw our key deleted."""


class Registrar:
    """Keeps ``endpoint`` registered under ``target`` in etcd while an ``async with`` block runs.

    ``target`` names the service (``"foo/bar/my-service"`` or ``"etcd:///foo/bar/my-service"``);
    ``endpoint`` is an :class:`Endpoint` or an address string, with ``metadata`` for the latter.
    The key defaults to ``<service>/<addr>`` (``foo/bar/my-service/10.0.0.5:50051``); ``key``
    overrides it and must lie under the service prefix. The value is written in the Go client's
    format, under a lease of ``ttl`` seconds.

    Entering returns once the lease is granted and the key written; if etcd does not answer within
    ``start_timeout`` seconds (default: the client's request timeout) it raises
    :class:`EtcdUnavailableError`. Leaving revokes the lease within ``revoke_timeout`` seconds, also
    on error or cancellation; a revoke that fails is logged and the lease expires on its own.

    Enter and leave a Registrar in the same task, once; its background tasks live in a task group
    that spans the block.
    """

    def __init__(
        self,
        client: EtcdClient,
        target: str,
        endpoint: Endpoint | str,
        *,
        ttl: int = DEFAULT_TTL,
        key: str | None = None,
        metadata: Any = None,
        start_timeout: float | None = None,
        revoke_timeout: float = DEFAULT_REVOKE_TIMEOUT,
    ) -> None:
        check_ttl(ttl)
        if start_timeout is not None and start_timeout <= 0:
            raise ValueError(f"start_timeout must be positive, got {start_timeout!r}")
        if revoke_timeout <= 0:
            raise ValueError(f"revoke_timeout must be positive, got {revoke_timeout!r}")
        if not isinstance(client, EtcdClient):
            raise TypeError(
                f"Registrar needs the client aiodiscovery.connect() returns, got "
                f"{type(client).__name__}"
            )
        self.client = client
        self.target = target
        self.prefix = parse_target(target)
        self.endpoint = _as_endpoint(endpoint, metadata)
        self.key = check_key(self.prefix, self.prefix + self.endpoint.addr if key is None else key)
        self.ttl = ttl
        self.start_timeout = client.timeout if start_timeout is None else start_timeout
        # Each request of a registration gets a share of the TTL, so that a member that does not
        # answer is left while the lease can still be saved on another one.
        self._attempt_timeout = min(client.timeout, max(_MIN_ATTEMPT, ttl / 3))
        self.revoke_timeout = revoke_timeout
        # Encoding now makes metadata that JSON cannot hold fail here, not in the background.
        self._value = encode_endpoint(self.endpoint)
        self._key_bytes = self.key.encode()
        self._state = RegistrarState.REGISTERING
        self._changed = anyio.Event()
        self._entered = False
        self._task_group: TaskGroup | None = None
        self._session: _Session | None = None
        # Every lease granted and not yet revoked: leaving must revoke one whose put may have
        # reached etcd even though its reply never reached us.
        self._leases: set[int] = set()
        self._counts = _Counters()
        self._last_refresh: float | None = None
        self._last_loss_reason: str | None = None

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> RegistrarState:
        """The current :class:`RegistrarState`."""
        return self._state

    @property
    def registered(self) -> bool:
        """Whether the key is written under a lease that is being kept alive."""
        return self._state is RegistrarState.REGISTERED

    @property
    def lease_id(self) -> int | None:
        """The lease of the current registration, or of the lost one while re-registering.

        ``None`` before entering and after leaving.
        """
        if self._session is None or self._state is RegistrarState.CLOSED:
            return None
        return self._session.lease

    async def wait_registered(self) -> None:
        """Return once the endpoint is registered (at once if it is now).

        Raises :class:`RuntimeError` if the registrar closes first. Wrap it in
        ``anyio.fail_after`` to bound the wait.
        """
        await self._wait_until(lambda: self._state is RegistrarState.REGISTERED)

    async def wait_lost(self) -> None:
        """Return once the registration is lost: at once if it is lost now, else at the next loss.

        Raises :class:`RuntimeError` if the registrar closes first.
        """
        losses = self._counts.losses
        await self._wait_until(
            lambda: self._state is RegistrarState.LOST or self._counts.losses != losses
        )

    def statistics(self) -> RegistrarStatistics:
        """A snapshot of the registrar's counters and current lease."""
        counts = self._counts
        session = self._session
        return RegistrarStatistics(
            state=self._state,
            key=self.key,
            lease_id=self.lease_id,
            ttl=session.ttl if session is not None else None,
            registrations=counts.registrations,
            re_registrations=max(0, counts.registrations - 1),
            losses=counts.losses,
            last_loss_reason=self._last_loss_reason,
            leases_granted=counts.grants,
            puts=counts.puts,
            revokes=counts.revokes,
            key_reads=counts.key_reads,
            keepalive_streams=counts.keepalive_streams,
            keepalives_sent=counts.keepalives_sent,
            keepalive_round_trips=counts.keepalive_round_trips,
            watch_streams=counts.watch_streams,
            overwrites=counts.overwrites,
            last_refresh=self._last_refresh,
        )

    def __repr__(self) -> str:
        lease = self.lease_id
        lease_text = f"{lease:x}" if lease is not None else "-"
        return (
            f"<Registrar {self.key!r} addr={self.endpoint.addr!r} {self._state.value} "
            f"lease={lease_text} ttl={self.ttl}>"
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a Registrar can be entered only once; create a new one")
        self._entered = True
        try:
            session = await self._first_registration()
            self._adopt(session)
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
        except BaseException:
            self._set_state(RegistrarState.CLOSED)
            await self._revoke_all()
            raise
        self._task_group = task_group
        task_group.start_soon(self._maintain, session, name=f"registrar {self.key}")
        self._revoke_stale_soon()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        task_group, self._task_group = self._task_group, None
        self._set_state(RegistrarState.CLOSED)
        suppress = False
        try:
            if task_group is not None:
                # Stop the background first: a keep-alive that saw the revoke would re-register.
                suppress = await exit_task_group(task_group, exc_type, exc, tb)
        finally:
            await self._revoke_all()
        return suppress

    async def _first_registration(self) -> _Session:
        backoff = Backoff(initial=_RETRY_INITIAL, cap=_RETRY_CAP)
        last: EtcdError | None = None
        # etcd that is starting or electing a leader answers within moments: retry until the
        # deadline rather than fail on the first UNAVAILABLE.
        with anyio.move_on_after(self.start_timeout):
            await self.client.connect()
            while True:
                try:
                    return await self._register()
                except EtcdError as exc:
                    if exc.code in _PERMANENT_CODES:
                        raise
                    last = exc
                    logger.debug("registering %s: %s; retrying", self.key, exc)
                await backoff.sleep()
        urls = ", ".join(self.client.urls)
        raise EtcdUnavailableError(
            f"could not register {self.key!r}: etcd at {urls} did not grant a lease and accept "
            f"the put within {self.start_timeout:g} s (last error: {last or 'none, no answer'})",
            code=last.code if last is not None else "DEADLINE_EXCEEDED",
            details=last.details if last is not None else "",
        ) from last

    async def _maintain(self, session: _Session) -> None:
        """The background loop: hold the session until it is lost, then replace it, forever."""
        backoff = Backoff(initial=_RETRY_INITIAL, cap=_RETRY_CAP)
        while True:
            reason = await self._hold(session)
            self._counts.losses += 1
            self._last_loss_reason = reason
            self._set_state(RegistrarState.LOST)
            logger.warning(
                "registration of %s lost (lease %x): %s; registering again",
                self.key,
                session.lease,
                reason,
            )
            if anyio.current_time() - session.started >= session.ttl:
                # Quick retries are for a registration that held; one knocked down again and again
                # (someone deleting the key in a loop) backs off to the cap instead.
                backoff.reset()
            session = await self._register_again(backoff)
            self._adopt(session)
            self._revoke_stale_soon()

    async def _register_again(self, backoff: Backoff) -> _Session:
        while True:
            await backoff.sleep()
            try:
                return await self._register()
            except EtcdError as exc:
                logger.debug("registering %s again: %s; retrying", self.key, exc)
            except Exception:
                # Never give up on the registration, not even for a bug: log it loudly and retry.
                logger.exception("registering %s again failed unexpectedly; retrying", self.key)

    def _adopt(self, session: _Session) -> None:
        again = self._session is not None
        self._session = session
        self._counts.registrations += 1
        self._last_refresh = time.time()
        self._set_state(RegistrarState.REGISTERED)
        logger.info(
            "%s %s -> %s (lease %x, TTL %d s)",
            "re-registered" if again else "registered",
            self.key,
            self.endpoint.addr,
            session.lease,
            session.ttl,
        )

    # -- grant, put, revoke ---------------------------------------------------------------------

    async def _register(self) -> _Session:
        """Grant a lease, then put the key under it: two requests, not one transaction.

        A lease that etcd drops between the two (it expired, someone revoked it) fails the put with
        :class:`LeaseNotFoundError`; the caller then grants a new one.
        """
        sent = anyio.current_time()
        lease, ttl = await self._grant()
        self._leases.add(lease)
        try:
            revision = await self._put(lease)
        except LeaseNotFoundError:
            # The lease expired before the put landed; it is gone, and the caller grants anew.
            self._leases.discard(lease)
            raise
        now = anyio.current_time()
        return _Session(
            lease=lease,
            ttl=ttl,
            revision=revision,
            started=now,
            next_refresh=sent + ttl / 3,
            expires=sent + ttl,
        )

    async def _grant(self) -> tuple[int, int]:
        self._counts.grants += 1
        reply = await self.client.unary(
            lambda m: m.lease.LeaseGrant,
            rpc.LeaseGrantRequest(TTL=self.ttl),
            timeout=self._attempt_timeout,
        )
        if reply.error:
            raise EtcdError(f"etcd refused the lease: {reply.error}", details=reply.error)
        return int(reply.ID), int(reply.TTL)

    async def _put(self, lease: int) -> int:
        if not lease:
            raise AssertionError("a registration is never written without a lease")
        self._counts.puts += 1
        reply = await self.client.unary(
            lambda m: m.kv.Put,
            rpc.PutRequest(key=self._key_bytes, value=self._value, lease=lease),
            timeout=self._attempt_timeout,
        )
        return int(reply.header.revision)

    async def _revoke(self, lease: int, timeout: float) -> None:
        self._counts.revokes += 1
        with contextlib.suppress(LeaseNotFoundError):
            await self.client.unary(
                lambda m: m.lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease), timeout=timeout
            )
        self._leases.discard(lease)

    def _revoke_stale_soon(self) -> None:
        stale = self._leases - {self._session.lease} if self._session is not None else set()
        if stale and self._task_group is not None:
            self._task_group.start_soon(self._revoke_stale, frozenset(stale))

    async def _revoke_stale(self, leases: frozenset[int]) -> None:
        # A lease we gave up on may still be alive (etcd extends every lease when it restarts).
        # The key is on the new lease now, so revoking the old one removes nothing from resolvers.
        for lease in leases:
            try:
                await self._revoke(lease, self.client.timeout)
            except Exception as exc:
                logger.debug("revoking stale lease %x: %s", lease, exc)
            finally:
                # One try is enough: it expires on its own, and a set that only grows would leak.
                self._leases.discard(lease)

    async def _revoke_all(self) -> None:
        """Revoke every lease we hold, bounded in time and shielded from cancellation."""
        current = self._session.lease if self._session is not None else None
        leases = sorted(self._leases, key=lambda lease: lease != current)
        if not leases:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.revoke_timeout) as scope:
            for lease in leases:
                try:
                    await self._revoke(lease, self.revoke_timeout)
                except Exception as exc:
                    logger.warning(
                        "could not revoke lease %x of %s: %s; the key stays until the lease's "
                        "TTL runs out",
                        lease,
                        self.key,
                        exc,
                    )
                else:
                    if lease == current:
                        logger.info("unregistered %s (lease %x revoked)", self.key, lease)
        if scope.cancelled_caught:
            logger.warning(
                "revoking the lease of %s took longer than %g s; the key stays until the "
                "lease's TTL runs out",
                self.key,
                self.revoke_timeout,
            )

    # -- holding a session ----------------------------------------------------------------------

    async def _hold(self, session: _Session) -> str:
        """Keep ``session`` alive and watch its key; return why it was lost."""
        reasons: list[str] = []

        async def until_lost(probe: Callable[[_Session], Awaitable[str]]) -> None:
            try:
                reason = await probe(session)
            except anyio.get_cancelled_exc_class():
                # Ours re-raises at this checkpoint; one gRPC raised for a call it cancelled
                # itself does not, and must not end the probe silently: the other one would go
                # on watching a lease that nobody refreshes.
                await checkpoint()
                reason = "gRPC cancelled a call on its own"
            except Exception as exc:
                # A bug in one probe must cost a re-registration, never the registration itself.
                logger.exception("registrar %s: unexpected error", self.key)
                reason = f"unexpected error {exc!r}"
            reasons.append(reason)
            task_group.cancel_scope.cancel()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(until_lost, self._keep_alive)
            task_group.start_soon(until_lost, self._watch_key)
        if not reasons:
            # Both probes were cancelled with us, and the group ended before anyio delivered our
            # own cancellation: take it here.
            await checkpoint()
            reasons.append("the keep-alive and the watch were both cancelled")
        return reasons[0]

    async def _keep_alive(self, session: _Session) -> str:
        """Refresh the lease every TTL/3 on one stream; return once it is lost."""
        backoff = Backoff(initial=_RETRY_INITIAL, cap=max(_RETRY_INITIAL, session.ttl / 3))
        # The watchdog's deadline moves with each successful refresh. Reaching it means etcd may
        # have dropped the lease, and we cannot know: it counts as lost, even if etcd (which
        # extends leases when it restarts) might still hold it.
        with anyio.CancelScope(deadline=session.expires) as watchdog:
            while True:
                try:
                    return await self._keep_alive_stream(session, watchdog, backoff)
                except (EtcdError, _StreamBroken) as exc:
                    failure = exc
                logger.debug(
                    "keep-alive of lease %x: %s; opening a new stream", session.lease, failure
                )
                await backoff.sleep()
                if isinstance(failure, EtcdError):
                    # etcd 3.5.1 does not check the token of a LeaseKeepAlive stream; later
                    # versions may. A stream refused for its token needs a new one (a no-op for
                    # any other error, or without a user name).
                    await self.client.reauthenticate(failure)
        return f"no successful keep-alive within the lease's {session.ttl} s TTL"

    async def _keep_alive_stream(
        self, session: _Session, watchdog: anyio.CancelScope, backoff: Backoff
    ) -> str:
        interval = session.ttl / 3
        # A reply that takes longer than a healthy etcd ever needs will not come in time to help.
        patience = min(interval, self.client.timeout)
        members = self.client.members
        member = members.active
        abandoned = member.abandoned()
        call = member.lease.LeaseKeepAlive(metadata=self.client.stream_metadata())
        self._counts.keepalive_streams += 1
        request = rpc.LeaseKeepAliveRequest(ID=session.lease)
        try:
            while True:
                with anyio.move_on_at(session.next_refresh):
                    await abandoned.wait()
                if abandoned.is_set():
                    # Someone found this member silent: refresh on the member now in use.
                    raise _StreamBroken(f"left etcd member {member.url}")
                sent = anyio.current_time()
                reply: Any = None
                # etcd answers a stream's requests one at a time, in order: one that stalls (a
                # follower forwarding to a leader that just died waits for etcd's whole request
                # timeout) holds up all later ones, so a fresh stream is the only way past it.
                with anyio.move_on_after(patience):
                    self._counts.keepalives_sent += 1
                    await rpc_step(call.write(request))
                    reply = await rpc_step(call.read())
                if reply is None:
                    # The reply was due: the member is frozen, partitioned or overloaded. Move
                    # every stream of the client off it while the lease can still be refreshed.
                    members.abandon(member, f"no keep-alive reply within {patience:.3g} s")
                    raise _StreamBroken(f"no keep-alive reply within {patience:.3g} s")
                if reply is grpc.aio.EOF:
                    raise _StreamBroken("etcd closed the keep-alive stream")
                members.heard(member)
                if reply.TTL <= 0:
                    return "etcd reports the lease expired or revoked"
                self._counts.keepalive_round_trips += 1
                self._last_refresh = time.time()
                session.next_refresh = sent + interval
                session.expires = sent + reply.TTL
                watchdog.deadline = session.expires
                backoff.reset()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                members.abandon(member, f"keep-alive stream failed: {exc.details()}")
            raise translate_error(exc) from exc
        except asyncio.InvalidStateError:
            # grpc.aio refuses a write on a call that already ended; its status says why.
            raise _StreamBroken(f"keep-alive stream ended: {await _status(call)}") from None
        finally:
            await close_call(call)

    async def _watch_key(self, session: _Session) -> str:
        """Watch our key with a raw watch stream; return once someone deletes it."""
        backoff = Backoff(initial=_RETRY_INITIAL, cap=_RETRY_CAP)
        # Our own put is at session.revision: anything after it is someone else's doing.
        start: int | None = session.revision + 1
        while True:
            try:
                if start is None:
                    # Rather than resume from a revision compaction may have removed meanwhile,
                    # look at the key itself, then watch from that read's revision.
                    revision = await self._read_key(session)
                    if revision is None:
                        return "the key was deleted while the watch was down"
                    start = revision + 1
                return await self._watch_stream(session, start, backoff)
            except (EtcdError, _StreamBroken) as exc:
                logger.debug("watch of %s: %s; watching again", self.key, exc)
                start = None
            await backoff.sleep()

    async def _watch_stream(self, session: _Session, start: int, backoff: Backoff) -> str:
        """Watch our key from ``start`` on one stream; return once it is deleted.

        Every way the stream itself can fail surfaces as an :class:`EtcdError`
        (:func:`watch_responses`); etcd cancelling the watch as :class:`_StreamBroken`.
        """
        self._counts.watch_streams += 1
        create = rpc.WatchCreateRequest(key=self._key_bytes, start_revision=start)

        def handle(reply: rpc.WatchResponse) -> None:
            if reply.canceled:
                raise _StreamBroken(
                    f"etcd cancelled the watch ({reply.cancel_reason or 'no reason given'}, "
                    f"compact revision {reply.compact_revision})"
                )
            if reply.created:
                backoff.reset()
            for event in reply.events:
                if event.type == rpc.Event.DELETE:
                    raise _KeyDeleted
                self._note_overwrite(session, int(event.kv.lease))

        try:
            await run_watch(self.client, create, handle)
        except _KeyDeleted:
            return "the key was deleted (by another client, or with its lease)"
        # run_watch ends only by raising; this keeps a future change from ending silently.
        raise _StreamBroken("the watch stream ended")

    async def _read_key(self, session: _Session) -> int | None:
        """The current revision if our key exists, else ``None``."""
        self._counts.key_reads += 1
        reply = await self.client.unary(lambda m: m.kv.Range, rpc.RangeRequest(key=self._key_bytes))
        if not reply.kvs:
            return None
        self._note_overwrite(session, int(reply.kvs[0].lease))
        return int(reply.header.revision)

    def _note_overwrite(self, session: _Session, lease: int) -> None:
        if lease == session.lease or session.overwrite_reported:
            return
        # Taking the key back could start a tug of war with a second registrar of the same key,
        # so we only say so: the key no longer goes away with this registrar.
        session.overwrite_reported = True
        self._counts.overwrites += 1
        owner = f"lease {lease:x}" if lease else "no lease"
        logger.warning(
            "%s was overwritten by another writer (%s, ours is %x); it will not disappear when "
            "this registrar closes",
            self.key,
            owner,
            session.lease,
        )

    # -- state plumbing -------------------------------------------------------------------------

    def _set_state(self, state: RegistrarState) -> None:
        if state is self._state or self._state is RegistrarState.CLOSED:
            return
        self._state = state
        # One event per change: waiters wake, re-check their condition and wait on the next one.
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self._state is RegistrarState.CLOSED:
                raise RuntimeError(f"{self!r} is closed")
            await self._changed.wait()


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


async def _status(call: Any) -> str:
    code = await call.code()
    details = await call.details()
    return f"{getattr(code, 'name', code)}: {details}"
