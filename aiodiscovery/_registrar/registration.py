"""Registration: the work that keeps one Registrar's key written, in the lease keeper's tasks.

It writes the key under the keeper's live lease and holds it until something changes: the lease is
lost (the key is written again under the keeper's next one), someone deletes the key (it is written
again under the same lease, with backoff), or the server's health status stops being SERVING (the
key is deleted until it is SERVING again). Every etcd request of it is bounded by the keeper's
per-attempt timeout, so that a frozen member is left while the lease can still be saved.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
from anyio.lowlevel import checkpoint

from .._backoff import Backoff
from .._exceptions import EtcdError, LeaseNotFoundError
from .._logsafe import safe
from .._statecell import StateCell
from .health import HealthWatch
from .keepalive import LeaseGrant
from .lease import KeeperLink, LeaseState
from .leasedkey import LeasedKey
from .timing import RETRY_CAP, RETRY_INITIAL, retry_until

__all__ = ["RegistrarState", "Registration"]

logger = logging.getLogger("aiodiscovery.registrar")

T = TypeVar("T")

# How long leaving waits for the background work to stop (each gRPC call closes within 1 s).
_STOP_TIMEOUT = 3.0


class RegistrarState(enum.Enum):
    """Where a :class:`Registrar` stands."""

    #: The first put is under way (``__aenter__`` has not returned yet).
    REGISTERING = "registering"
    #: The key is written under a lease that was granted or refreshed within its TTL.
    REGISTERED = "registered"
    #: The lease or the key was lost; the key is being written again, with backoff.
    LOST = "lost"
    #: The server's health status is not SERVING: the key is deleted until it is again.
    UNHEALTHY = "unhealthy"
    #: The block was left (or entering failed): the key is gone, nothing runs any more.
    CLOSED = "closed"


class Registration:
    """Keeps ``key`` written under ``keeper``'s lease while ``health`` (if any) says SERVING.

    ``addr`` is the endpoint's address, for log lines. :meth:`first_put` writes the key on the
    caller's behalf when entering; :meth:`run` does everything after, until :meth:`stop`.
    """

    def __init__(
        self, key: LeasedKey, link: KeeperLink, health: HealthWatch | None, addr: str
    ) -> None:
        self.key = key
        self.link = link
        self.keeper = link.keeper
        self.health = health
        self.addr = addr
        self._label = safe(key.key)
        self._cell = StateCell(RegistrarState.REGISTERING, RegistrarState.CLOSED)
        self._scope = anyio.CancelScope()
        self._done: anyio.Event | None = None
        #: The lease of the last put that succeeded.
        self.grant: LeaseGrant | None = None
        #: The lease of the last put sent (it may have landed without an answer).
        self.attempted: LeaseGrant | None = None
        self._written = False
        self._revision = 0
        self._registered_at = 0.0
        self.registrations = 0
        self.losses = 0
        self.last_loss_reason: str | None = None
        self.health_deregistrations = 0

    # -- entering and leaving -------------------------------------------------------------------

    async def first_put(self, deadline: float) -> None:
        """Write the key before ``deadline`` (anyio's clock), retrying what a retry can fix.

        Raises :class:`EtcdUnavailableError` at the deadline, at once for a permanent error.
        """
        urls = ", ".join(self.keeper.client.urls)
        failure = (
            f"could not register {self.key.key!r}: etcd at {urls} did not grant a lease and "
            "accept the put in time"
        )

        async def attempt() -> None:
            await self._register(await self.link.live_grant())

        await retry_until(deadline, attempt, f"registering {self._label}", failure)

    def start(self) -> None:
        """Run :meth:`run` in the keeper's task group."""
        self._done = anyio.Event()
        self.link.start(self.run, name=f"registrar {self._label}")

    async def stop(self) -> None:
        """Stop the background work (the state becomes CLOSED); call it shielded."""
        self.set_state(RegistrarState.CLOSED)
        self._scope.cancel()
        if self._done is not None:
            with anyio.move_on_after(_STOP_TIMEOUT):
                await self._done.wait()

    async def delete(self, timeout: float) -> None:
        """Delete the key if it is still on our last lease, within ``timeout`` seconds."""
        grant = self.attempted
        if grant is None:
            return
        with anyio.move_on_after(timeout) as scope:
            try:
                await self.key.delete(grant.id, timeout)
            except EtcdError as exc:
                logger.warning(
                    "could not delete %s: %s; it stays until lease %x is revoked or expires",
                    self._label,
                    safe(exc),
                    grant.id,
                )
                return
        if scope.cancelled_caught:
            logger.warning(
                "deleting %s took longer than %g s; it stays until lease %x is revoked or expires",
                self._label,
                timeout,
                grant.id,
            )
        else:
            logger.info("unregistered %s (key deleted from lease %x)", self._label, grant.id)

    # -- the background -------------------------------------------------------------------------

    async def run(self) -> None:
        """Everything after entering, in the keeper's task group, until the Registrar leaves or
        the keeper closes."""
        try:
            with self._scope:
                async with anyio.create_task_group() as task_group:
                    if self.health is not None:
                        task_group.start_soon(self.health.follow)
                    task_group.start_soon(self._maintain)
        except Exception:
            # The keeper's other work must go on: an error here would stop its whole group.
            logger.exception("registrar %s stopped on an unexpected error", self._label)
        finally:
            self.set_state(RegistrarState.CLOSED)
            assert self._done is not None
            self._done.set()

    async def _maintain(self) -> None:
        """Keep the key written while the server is healthy, forever."""
        backoff = Backoff(initial=RETRY_INITIAL, cap=RETRY_CAP)
        keeper = self.keeper
        while True:
            try:
                await self._step(backoff)
            except Exception:
                if keeper.state is LeaseState.CLOSED:
                    return  # the keeper is closing, and cancels us in a moment
                # Never give up on the registration, not even for a bug: log it loudly, retry.
                logger.exception("registrar %s: unexpected error; retrying", self._label)
                self._written = False
                await backoff.sleep()

    async def _step(self, backoff: Backoff) -> None:
        """Write the key if it is not, then hold it until something changes."""
        health = self.health
        if health is not None and not health.serving:
            await self._stay_down(health)
            return
        if not self._written:
            grant = await self.link.live_grant()
            try:
                await self._register(grant)
            except EtcdError as exc:
                logger.debug("registering %s again: %s; retrying", self._label, safe(exc))
                # A refused token is renewed here, within the client's own timeout: a unary
                # call renews it only within what is left of its deadline (a share of the TTL),
                # which a slow Authenticate (bcrypt, then raft) can outlast every time.
                await self.key.client.reauthenticate(exc)
                await backoff.sleep()
                return
        assert self.grant is not None
        kind, reason = await self._hold(self.grant)
        if kind == "health":
            return
        self._written = False
        self.losses += 1
        self.last_loss_reason = reason
        self.set_state(RegistrarState.LOST)
        if kind == "lease":
            # The keeper said so (and backs off); the key is written under its next lease.
            logger.info("registration of %s lost with its lease: %s", self._label, safe(reason))
            return
        logger.warning("registration of %s lost: %s; registering again", self._label, safe(reason))
        if anyio.current_time() - self._registered_at >= self.keeper.ttl:
            # Quick retries are for a registration that held; one knocked down again and again
            # (someone deleting the key in a loop) backs off to the cap instead.
            backoff.reset()
        await backoff.sleep()

    async def _hold(self, grant: LeaseGrant) -> tuple[str, str]:
        """Wait until the lease is lost, the key deleted or the server unhealthy: what and why."""

        async def lease_lost() -> tuple[str, str]:
            await grant.lost.wait()
            return "lease", grant.reason or "the lease was lost"

        async def key_deleted() -> tuple[str, str]:
            return "key", await self.key.until_deleted(grant.id, self._revision)

        waiters = [lease_lost, key_deleted]
        health = self.health
        if health is not None:

            async def unhealthy() -> tuple[str, str]:
                await health.wait_not_serving()
                return "health", str(health.status)

            waiters.append(unhealthy)
        # gRPC cancelling a call on its own (see _first) costs a fresh put and watch.
        return await _first(waiters, ("key", "gRPC cancelled a call on its own"))

    async def _stay_down(self, health: HealthWatch) -> None:
        """The server is not serving: delete the key, then wait until it serves again."""
        self.set_state(RegistrarState.UNHEALTHY)
        grant = self.grant
        if self._written and grant is not None:
            self.health_deregistrations += 1
            logger.info(
                "deregistering %s: health status %s (service %r)",
                self._label,
                health.status,
                health.service,
            )

            async def lease_lost() -> bool:
                await grant.lost.wait()
                return True

            async def deleted() -> bool:
                await self._delete_until_done(grant)
                return True

            async def serving() -> bool:
                await health.wait_serving()
                return True

            # Done once the key is gone: deleted, gone with the lease, or to be written anyway.
            if not await _first([deleted, lease_lost, serving], False):
                return
            self._written = False
        await health.wait_serving()

    # -- etcd requests --------------------------------------------------------------------------

    async def _register(self, grant: LeaseGrant) -> None:
        """Put the key under ``grant``; a lease etcd no longer knows is reported to the keeper."""
        self.attempted = grant
        try:
            revision = await self.key.put(grant.id)
        except LeaseNotFoundError:
            self.keeper.report_lost(grant.id, "etcd refused a put under it (lease not found)")
            raise
        again = self.registrations > 0
        self.grant = grant
        self._written = True
        self._revision = revision
        self._registered_at = anyio.current_time()
        self.registrations += 1
        self.set_state(RegistrarState.REGISTERED)
        logger.info(
            "%s %s -> %s (lease %x, TTL %d s)",
            "re-registered" if again else "registered",
            self._label,
            safe(self.addr),
            grant.id,
            grant.ttl,
        )

    async def _delete_until_done(self, grant: LeaseGrant) -> None:
        backoff = Backoff(initial=RETRY_INITIAL, cap=RETRY_CAP)
        while True:
            try:
                await self.key.delete(grant.id)
            except EtcdError as exc:
                logger.debug("deregistering %s: %s; retrying", self._label, safe(exc))
            else:
                return
            await backoff.sleep()

    # -- state plumbing -------------------------------------------------------------------------

    @property
    def state(self) -> RegistrarState:
        """The current state."""
        return self._cell.value

    def set_state(self, state: RegistrarState) -> None:
        """Move to ``state`` (never out of CLOSED) and wake the waiters."""
        self._cell.set(state)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; :class:`RuntimeError` once CLOSED."""
        await self._cell.wait_until(predicate, f"the registrar of {self._label}")


async def _first(waiters: Sequence[Callable[[], Awaitable[T]]], fallback: T) -> T:
    """Run ``waiters`` together; return the first result and cancel the others.

    ``fallback`` is the result when gRPC ends a waiter with a cancellation of its own.
    """
    results: list[T] = []
    async with anyio.create_task_group() as task_group:

        async def run(waiter: Callable[[], Awaitable[T]]) -> None:
            try:
                result = await waiter()
            except anyio.get_cancelled_exc_class():
                # Ours re-raises at this checkpoint; one gRPC raised for a call it cancelled
                # itself does not, and must not end the wait silently.
                await checkpoint()
                result = fallback
            results.append(result)
            task_group.cancel_scope.cancel()

        for waiter in waiters:
            task_group.start_soon(run, waiter)
    if not results:
        # Every waiter was cancelled with us, and the group ended before anyio delivered our own
        # cancellation: take it here.
        await checkpoint()
        return fallback
    return results[0]
