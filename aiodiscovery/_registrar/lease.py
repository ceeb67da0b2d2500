"""LeaseKeeper: one etcd lease kept alive while a block runs, like Go's ``concurrency.Session``.

Entering grants the lease; one long-lived ``LeaseKeepAlive`` stream refreshes it every TTL/3 (see
:mod:`.keepalive`). A lease that is lost (etcd says it expired or was revoked, no refresh got
through for a whole TTL, or someone reports a put refused for it) is replaced by a new grant with
jittered backoff, forever; every :class:`~aiodiscovery.Registrar` on the keeper then writes its key
again under the new lease. Leaving revokes the lease, shielded and bounded in time, so every key
on it goes at once.

The keeper's background work (the keep-alive, and the work of the Registrars on it) runs in a task
group of its own task (:class:`._taskgroup.TaskHost`), not in the caller's: no cancel scope is held
across the block, so keepers and Registrars may be left in any order.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
from aetcd import rpc
from anyio.lowlevel import checkpoint

from .._backoff import Backoff
from .._codec.keys import check_ttl
from .._etcd.client import EtcdClient
from .._exceptions import EtcdError, LeaseNotFoundError
from .._logsafe import safe
from .._metrics import track
from .._statecell import StateCell
from .._taskgroup import EnterOnce, TaskHost
from .keepalive import KeepAliveCounts, LeaseGrant, grant_lease, keep_alive, lease_text
from .timing import RETRY_CAP, RETRY_INITIAL, attempt_timeout, retry_until

__all__ = [
    "DEFAULT_REVOKE_TIMEOUT",
    "DEFAULT_TTL",
    "KeeperLink",
    "LeaseKeeper",
    "LeaseState",
    "LeaseStatistics",
    "check_lifetimes",
]

logger = logging.getLogger("aiodiscovery.registrar")

DEFAULT_TTL = 10
DEFAULT_REVOKE_TIMEOUT = 2.0
# Keys named in one log line; the rest are counted.
_KEYS_LOGGED = 3


def check_lifetimes(
    owner: str, client: object, start_timeout: float | None, revoke_timeout: float
) -> None:
    """The arguments a LeaseKeeper and a Registrar (``owner``) share: their client, timeouts."""
    if start_timeout is not None and start_timeout <= 0:
        raise ValueError(f"start_timeout must be positive, got {start_timeout!r}")
    if revoke_timeout <= 0:
        raise ValueError(f"revoke_timeout must be positive, got {revoke_timeout!r}")
    if not isinstance(client, EtcdClient):
        raise TypeError(
            f"{owner} needs the client aiodiscovery.connect() returns, got {type(client).__name__}"
        )


class LeaseState(enum.Enum):
    """Where a :class:`LeaseKeeper` stands."""

    #: The first grant is under way (``__aenter__`` has not returned yet).
    GRANTING = "granting"
    #: A lease is granted and was refreshed within its TTL.
    ALIVE = "alive"
    #: The lease was lost; a new one is being granted, with backoff.
    LOST = "lost"
    #: The block was left (or entering failed): the lease is revoked, nothing runs any more.
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LeaseStatistics:
    """A snapshot of what a :class:`LeaseKeeper` has done, from :meth:`LeaseKeeper.statistics`.

    ``keys`` are the keys of the Registrars on the lease. ``keepalive_streams`` counts
    ``LeaseKeepAlive`` streams opened (one for as long as it serves), ``keepalives_sent`` the
    refresh requests sent on them and ``keepalive_round_trips`` the replies that refreshed the
    lease. ``last_refresh`` is the wall-clock time (``time.time()``) of the last grant or refresh.
    """

    state: LeaseState
    lease_id: int | None
    ttl: int | None
    keys: tuple[str, ...]
    grants: int
    losses: int
    last_loss_reason: str | None
    revokes: int
    keepalive_streams: int
    keepalives_sent: int
    keepalive_round_trips: int
    last_refresh: float | None


class LeaseKeeper:
    """Keeps one etcd lease of ``ttl`` seconds alive while an ``async with`` block runs.

    Entering returns once the lease is granted; if etcd does not grant one within
    ``start_timeout`` seconds (default: the client's request timeout) it raises
    :class:`EtcdUnavailableError`. From then on a lost lease is replaced by a new one, forever:
    :attr:`lease_id` changes, :meth:`wait_lost` and :meth:`wait_alive` follow it. Leaving revokes
    the lease within ``revoke_timeout`` seconds, also on error or cancellation, so every key on it
    goes at once; a revoke that fails is logged and the lease expires on its own.

    Pass it as ``lease=`` to several :class:`~aiodiscovery.Registrar` so that their keys share
    one lease and one keep-alive stream; leaving the keeper ends their registrations too. Keys of
    your own go under :attr:`lease_id`; a put refused with :class:`LeaseNotFoundError` should be
    reported with :meth:`report_lost`.
    """

    def __init__(
        self,
        client: EtcdClient,
        *,
        ttl: int = DEFAULT_TTL,
        start_timeout: float | None = None,
        revoke_timeout: float = DEFAULT_REVOKE_TIMEOUT,
    ) -> None:
        check_ttl(ttl)
        check_lifetimes("LeaseKeeper", client, start_timeout, revoke_timeout)
        self.client = client
        self.ttl = ttl
        self.start_timeout = client.timeout if start_timeout is None else start_timeout
        self.revoke_timeout = revoke_timeout
        #: How long each request of a (re)registration under this lease may take.
        self.attempt_timeout = attempt_timeout(client.timeout, ttl)
        self._cell = StateCell(LeaseState.GRANTING, LeaseState.CLOSED)
        self._once = EnterOnce("LeaseKeeper")
        self._host: TaskHost | None = None
        self._grant: LeaseGrant | None = None
        self._hold_scope: anyio.CancelScope | None = None
        self._reported: str | None = None
        # Every lease granted and not yet revoked: leaving must revoke one whose keys may have
        # reached etcd even though no reply said so.
        self._leases: set[int] = set()
        self._keys: dict[object, str] = {}
        self._keepalive = KeepAliveCounts()
        self._grants = 0
        self._losses = 0
        self._revokes = 0
        self._last_loss_reason: str | None = None

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> LeaseState:
        """The current :class:`LeaseState`."""
        return self._cell.value

    @property
    def closed(self) -> bool:
        """Whether the block was left (or entering failed): nothing is kept any more."""
        return self._cell.value is LeaseState.CLOSED

    @property
    def alive(self) -> bool:
        """Whether a lease is granted and being kept alive."""
        return self._cell.value is LeaseState.ALIVE

    @property
    def lease_id(self) -> int | None:
        """The current lease, or the lost one while a new one is granted; ``None`` before
        entering and after leaving."""
        if self._grant is None or self._cell.value is LeaseState.CLOSED:
            return None
        return self._grant.id

    async def wait_alive(self) -> int:
        """Return the lease ID once a lease is alive (at once if one is now).

        Raises :class:`RuntimeError` if the keeper closes first.
        """
        return (await self._live_grant()).id

    async def wait_lost(self) -> None:
        """Return once the lease is lost: at once if it is lost now, else at the next loss.

        Raises :class:`RuntimeError` if the keeper closes first.
        """
        losses = self._losses
        cell = self._cell
        await cell.wait_until(lambda: cell.value is LeaseState.LOST or self._losses != losses, self)

    def report_lost(self, lease_id: int, reason: str) -> None:
        """Say that etcd no longer knows ``lease_id`` (a put under it failed with
        :class:`LeaseNotFoundError`): if it is the current lease, a new one is granted at once."""
        grant = self._grant
        if grant is None or grant.id != lease_id or grant.lost.is_set():
            return
        self._reported = reason
        if self._hold_scope is not None:
            self._hold_scope.cancel()

    def statistics(self) -> LeaseStatistics:
        """A snapshot of the keeper's counters and current lease."""
        grant = self._grant
        return LeaseStatistics(
            state=self._cell.value,
            lease_id=self.lease_id,
            ttl=grant.ttl if grant is not None else None,
            keys=tuple(self._keys.values()),
            grants=self._grants,
            losses=self._losses,
            last_loss_reason=self._last_loss_reason,
            revokes=self._revokes,
            keepalive_streams=self._keepalive.streams,
            keepalives_sent=self._keepalive.sent,
            keepalive_round_trips=self._keepalive.round_trips,
            last_refresh=self._keepalive.last_refresh,
        )

    def __repr__(self) -> str:
        return (
            f"<LeaseKeeper {self._cell.value.value} lease={lease_text(self.lease_id)} "
            f"ttl={self.ttl} keys={len(self._keys)}>"
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._once.enter()
        try:
            grant = await self._first_grant()
            self._host = TaskHost(f"aiodiscovery lease keeper {grant.id:x}")
            await self._host.open()
            self._adopt(grant)
            self._host.start_soon(self._maintain, grant, name=f"lease keeper {grant.id:x}")
        except BaseException:
            await self._close()
            raise
        track(self, "lease")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> bool:
        """Stop everything, then revoke every lease; return whether the current one was revoked."""
        self._cell.set(LeaseState.CLOSED)
        if self._host is not None:
            # Stop the background first: a keep-alive that saw the revoke would grant anew.
            await self._host.close()
        return await self._revoke_all()

    async def _first_grant(self) -> LeaseGrant:
        deadline = anyio.current_time() + self.start_timeout
        urls = ", ".join(self.client.urls)
        failure = f"etcd at {urls} did not grant a lease within {self.start_timeout:g} s"
        with anyio.move_on_at(deadline):
            await self.client.connect()
        return await retry_until(
            deadline, self._grant_lease, f"granting a {self._label()}", failure
        )

    async def _maintain(self, grant: LeaseGrant) -> None:
        """The background loop: hold the lease until it is lost, then grant a new one, forever."""
        backoff = Backoff(initial=RETRY_INITIAL, cap=RETRY_CAP)
        while True:
            reason = await self._hold(grant)
            self._lose(grant, reason)
            if anyio.current_time() - grant.started >= grant.ttl:
                # Quick retries are for a lease that held; one lost again and again backs off to
                # the cap instead.
                backoff.reset()
            grant = await self._grant_again(backoff)
            self._adopt(grant)
            self._revoke_stale_soon()

    async def _hold(self, grant: LeaseGrant) -> str:
        """Keep ``grant`` alive until it is lost or reported lost; return why."""
        reason: str | None = None
        with anyio.CancelScope() as self._hold_scope:
            if self._reported is None:
                try:
                    reason = await keep_alive(self.client, grant, self._keepalive, self._label)
                except anyio.get_cancelled_exc_class():
                    # Ours (report_lost, or the keeper closing) re-raises at this checkpoint; one
                    # gRPC raised for a call it cancelled itself does not, and must not end the
                    # keep-alive silently.
                    await checkpoint()
                    reason = "gRPC cancelled a call on its own"
                except Exception as exc:
                    # A bug must cost a new lease, never the registrations themselves.
                    logger.exception("%s: unexpected error in the keep-alive", self._label())
                    reason = f"unexpected error {exc!r}"
        self._hold_scope = None
        return reason or self._reported or "reported lost"

    async def _grant_again(self, backoff: Backoff) -> LeaseGrant:
        while True:
            await backoff.sleep()
            try:
                return await self._grant_lease()
            except EtcdError as exc:
                logger.debug("granting a new lease for %s: %s; retrying", self._label(), safe(exc))
                # As for a put (see Registration._step): a refused token is renewed within the
                # client's timeout, not only within what is left of the grant's.
                await self.client.reauthenticate(exc)
            except Exception:
                # Never give up, not even for a bug: log it loudly and retry.
                logger.exception("granting a new lease for %s failed; retrying", self._label())

    def _adopt(self, grant: LeaseGrant) -> None:
        self._grant = grant
        self._reported = None
        self._keepalive.last_refresh = time.time()
        self._cell.set(LeaseState.ALIVE)
        logger.debug("%s granted (TTL %d s)", self._label(), grant.ttl)

    def _lose(self, grant: LeaseGrant, reason: str) -> None:
        self._losses += 1
        self._last_loss_reason = reason
        grant.reason = reason
        grant.lost.set()
        self._cell.set(LeaseState.LOST)
        logger.warning("%s lost: %s; granting a new lease", self._label(), safe(reason))

    # -- grant and revoke -----------------------------------------------------------------------

    async def _grant_lease(self) -> LeaseGrant:
        self._grants += 1
        grant = await grant_lease(self.client, self.ttl, self.attempt_timeout)
        self._leases.add(grant.id)
        return grant

    async def _revoke(self, lease: int, timeout: float) -> None:
        self._revokes += 1
        with contextlib.suppress(LeaseNotFoundError):
            await self.client.unary(
                lambda m: m.lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease), timeout=timeout
            )
        self._leases.discard(lease)

    def _revoke_stale_soon(self) -> None:
        current = self._grant.id if self._grant is not None else None
        stale = self._leases - {current}
        if stale and self._host is not None and self._host.running:
            self._host.start_soon(self._revoke_stale, frozenset(stale), name="revoke stale leases")

    async def _revoke_stale(self, leases: frozenset[int]) -> None:
        # A lease we gave up on may still be alive (etcd extends every lease when it restarts).
        # The keys are on the new lease now, so revoking the old one removes nothing from resolvers.
        for lease in leases:
            try:
                await self._revoke(lease, self.client.timeout)
            except Exception as exc:
                logger.debug("revoking stale %s: %s", self._label(lease), safe(exc))
            finally:
                # One try is enough: it expires on its own, and a set that only grows would leak.
                self._leases.discard(lease)

    async def _revoke_all(self) -> bool:
        """Revoke every lease we hold, bounded in time and shielded from cancellation."""
        current = self._grant.id if self._grant is not None else None
        leases = sorted(self._leases, key=lambda lease: lease != current)
        revoked = False
        if not leases:
            return revoked
        label = self._label(current)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.revoke_timeout) as scope:
            for lease in leases:
                try:
                    await self._revoke(lease, self.revoke_timeout)
                except Exception as exc:
                    logger.warning(
                        "could not revoke %s: %s; its keys stay until the lease's TTL runs out",
                        self._label(lease),
                        safe(exc),
                    )
                else:
                    revoked = revoked or lease == current
                    logger.debug("revoked %s", self._label(lease))
        if scope.cancelled_caught:
            logger.warning(
                "revoking %s took longer than %g s; its keys stay until the lease's TTL runs out",
                label,
                self.revoke_timeout,
            )
        return revoked

    # -- for the Registrars on the lease (see KeeperLink) ---------------------------------------

    def _check_open(self) -> None:
        """Raise :class:`RuntimeError` unless the keeper is entered and not closed."""
        if self._host is None or not self._host.running or self._cell.value is LeaseState.CLOSED:
            raise RuntimeError(f"{self!r} is not open: enter it before the Registrars that use it")

    def _start(self, func: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        """Run ``func()`` in the keeper's task group: it is cancelled when the keeper closes."""
        self._check_open()
        assert self._host is not None
        self._host.start_soon(func, name=name)

    async def _live_grant(self) -> LeaseGrant:
        """The current lease once it is alive; :class:`RuntimeError` once the keeper closes."""
        await self._cell.wait_until(lambda: self._cell.value is LeaseState.ALIVE, self)
        assert self._grant is not None
        return self._grant

    # -- state plumbing -------------------------------------------------------------------------

    def _label(self, lease: int | None = None) -> str:
        """``lease 1a2b (svc/a/x, svc/b/y)``: what a log line is about."""
        if lease is None and self._grant is not None:
            lease = self._grant.id
        keys = [safe(key) for key in self._keys.values()]
        if len(keys) > _KEYS_LOGGED:
            keys[_KEYS_LOGGED:] = [f"{len(keys) - _KEYS_LOGGED} more"]
        lease_text = f"lease {lease:x}" if lease is not None else "lease"
        return f"{lease_text} ({', '.join(keys) or 'no keys'})"


class KeeperLink:
    """A Registrar's link to the :class:`LeaseKeeper` whose lease holds its key.

    The keeper's lease, task group and list of keys stay private to this module: a Registrar and
    its registration work reach them only through their link.
    """

    __slots__ = ("_owner", "keeper", "key")

    def __init__(self, keeper: LeaseKeeper, owner: object, key: str) -> None:
        self.keeper = keeper
        self.key = key
        self._owner = owner

    def attach(self) -> None:
        """Count the key among the keys on the lease (for statistics and log lines)."""
        self.keeper._keys[self._owner] = self.key

    def detach(self) -> None:
        """Stop counting the key."""
        self.keeper._keys.pop(self._owner, None)

    def check_open(self) -> None:
        """Raise :class:`RuntimeError` unless the keeper is entered and not closed."""
        self.keeper._check_open()

    def start(self, func: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        """Run ``func()`` in the keeper's task group: it is cancelled when the keeper closes."""
        self.keeper._start(func, name)

    async def live_grant(self) -> LeaseGrant:
        """The current lease once it is alive; :class:`RuntimeError` once the keeper closes."""
        return await self.keeper._live_grant()

    async def close_keeper(self) -> bool:
        """Close a keeper private to this Registrar; whether its current lease was revoked."""
        return await self.keeper._close()
