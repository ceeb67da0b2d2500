"""One granted lease and the keep-alive that refreshes it: one long-lived stream, a watchdog.

:func:`keep_alive` refreshes a :class:`LeaseGrant` every TTL/3 on one ``LeaseKeepAlive`` stream
and returns once the lease is lost: etcd reports it expired or revoked, or no refresh succeeded for
a whole TTL (the watchdog: after that etcd may have dropped the lease, and we cannot know). A reply
that is overdue abandons the etcd member (see :mod:`aiodiscovery._etcd.members`), so the next
stream, the re-grant and every other request of the client go to another member while the lease
can still be saved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import grpc
from aetcd import rpc

from .._backoff import Backoff
from .._etcd.rpc import StreamBroken, translate_error
from .._etcd.transport import Transport
from .._exceptions import EtcdError
from .._grpccall import close_call, rpc_step
from .._logsafe import safe
from .timing import RETRY_INITIAL

__all__ = ["KeepAliveCounts", "LeaseGrant", "grant_lease", "keep_alive", "lease_text"]

logger = logging.getLogger("aiodiscovery.registrar")


def lease_text(lease: int | None) -> str:
    """A lease ID as etcdctl shows it (hex), or ``-``."""
    return f"{lease:x}" if lease is not None else "-"


@dataclass(eq=False, slots=True)
class LeaseGrant:
    """One lease etcd granted, and where its refreshes stand (anyio's monotonic clock).

    ``lost`` is set, with ``reason``, once the lease is given up on; it is never refreshed again.
    """

    id: int
    ttl: int
    started: float
    next_refresh: float
    # The moment etcd may drop the lease unless a refresh got through: measured from when the
    # last successful request was *sent*, so that we never believe in a lease etcd already expired.
    expires: float
    lost: anyio.Event = field(default_factory=anyio.Event)
    reason: str | None = None

    @classmethod
    def granted(cls, lease: int, ttl: int, sent: float) -> LeaseGrant:
        """A lease granted with ``ttl`` by a request sent at ``sent``."""
        return cls(
            id=lease,
            ttl=ttl,
            started=anyio.current_time(),
            next_refresh=sent + ttl / 3,
            expires=sent + ttl,
        )


@dataclass(slots=True)
class KeepAliveCounts:
    """What the keep-alive has done, for the keeper's statistics."""

    streams: int = 0
    sent: int = 0
    round_trips: int = 0
    last_refresh: float | None = None


async def grant_lease(client: Transport, ttl: int, timeout: float) -> LeaseGrant:
    """Ask etcd for a lease of ``ttl`` seconds (:class:`EtcdError` if it refuses or cannot be
    asked)."""
    sent = anyio.current_time()
    reply = await client.unary(
        lambda m: m.lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl), timeout=timeout
    )
    if reply.error:
        raise EtcdError(f"etcd refused the lease: {reply.error}", details=reply.error)
    return LeaseGrant.granted(int(reply.ID), int(reply.TTL), sent)


async def keep_alive(
    client: Transport, grant: LeaseGrant, counts: KeepAliveCounts, label: Callable[[], str]
) -> str:
    """Refresh ``grant`` every TTL/3 on one stream at a time; return why it was lost.

    ``label()`` says what the lease is for, in log lines.
    """
    backoff = Backoff(initial=RETRY_INITIAL, cap=max(RETRY_INITIAL, grant.ttl / 3))
    # The watchdog's deadline moves with each successful refresh. Reaching it means etcd may have
    # dropped the lease, and we cannot know: it counts as lost, even if etcd (which extends leases
    # when it restarts) might still hold it.
    with anyio.CancelScope(deadline=grant.expires) as watchdog:
        while True:
            try:
                return await _stream(client, grant, counts, watchdog, backoff)
            except (EtcdError, StreamBroken) as exc:
                failure = exc
            logger.debug("keep-alive of %s: %s; opening a new stream", label(), safe(failure))
            await backoff.sleep()
            if isinstance(failure, EtcdError):
                # etcd 3.5.1 does not check the token of a LeaseKeepAlive stream; later versions
                # may. A stream refused for its token needs a new one (a no-op for any other
                # error, or without a user name).
                await client.reauthenticate(failure)
    return f"no successful keep-alive within the lease's {grant.ttl} s TTL"


async def _stream(
    client: Transport,
    grant: LeaseGrant,
    counts: KeepAliveCounts,
    watchdog: anyio.CancelScope,
    backoff: Backoff,
) -> str:
    interval = grant.ttl / 3
    # A reply that takes longer than a healthy etcd ever needs will not come in time to help.
    patience = min(interval, client.timeout)
    members = client.members
    member = members.active
    abandoned = member.abandoned()
    call = member.lease.LeaseKeepAlive(metadata=client.stream_metadata())
    counts.streams += 1
    request = rpc.LeaseKeepAliveRequest(ID=grant.id)
    try:
        while True:
            with anyio.move_on_at(grant.next_refresh):
                await abandoned.wait()
            if abandoned.is_set():
                # Someone found this member silent: refresh on the member now in use.
                raise StreamBroken(f"left etcd member {member.url}")
            sent = anyio.current_time()
            reply: Any = None
            # etcd answers a stream's requests one at a time, in order: one that stalls (a
            # follower forwarding to a leader that just died waits for etcd's whole request
            # timeout) holds up all later ones, so a fresh stream is the only way past it.
            with anyio.move_on_after(patience):
                counts.sent += 1
                await rpc_step(call.write(request))
                reply = await rpc_step(call.read())
            if reply is None:
                # The reply was due: the member is frozen, partitioned or overloaded. Move every
                # stream of the client off it while the lease can still be refreshed.
                members.abandon(member, f"no keep-alive reply within {patience:.3g} s")
                raise StreamBroken(f"no keep-alive reply within {patience:.3g} s")
            if reply is grpc.aio.EOF:
                raise StreamBroken("etcd closed the keep-alive stream")
            members.heard(member)
            if reply.TTL <= 0:
                return "etcd reports the lease expired or revoked"
            counts.round_trips += 1
            counts.last_refresh = time.time()
            grant.next_refresh = sent + interval
            grant.expires = sent + reply.TTL
            watchdog.deadline = grant.expires
            backoff.reset()
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            members.abandon(member, f"keep-alive stream failed: {exc.details()}")
        raise translate_error(exc) from exc
    except asyncio.InvalidStateError:
        # grpc.aio refuses a write on a call that already ended; its status says why.
        raise StreamBroken(f"keep-alive stream ended: {await _status(call)}") from None
    finally:
        await close_call(call)


async def _status(call: Any) -> str:
    code = await call.code()
    details = await call.details()
    return f"{getattr(code, 'name', code)}: {details}"
