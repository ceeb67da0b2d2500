"""Client-side health checking: a ``grpc.health.v1.Health/Watch`` stream per subchannel (gRFC A17).

With ``resolve(..., health_check="name")`` each subchannel, while its connection is READY, keeps
one ``Watch`` call for ``name`` open on that connection (``""`` asks about the whole server). It
takes new calls only while the last answer on the current connection is ``SERVING``: it is held
out of the picks (see :meth:`Subchannel.hold`) from the time a connection is made until the
first ``SERVING``, and whenever the server answers anything else; its calls in flight finish.
A server without the health service (``UNIMPLEMENTED``) counts as healthy, as in grpc core and
grpc-go, and is logged once at ERROR. Any other end of the stream makes the subchannel unusable
until the next answer; the stream is opened again at once if the last one had brought an
answer, else after a jittered exponential backoff (1 s, x1.6, up to 120 s: grpc's connection
backoff).

One ``Watch`` call is read by :class:`aiodiscovery._healthproto.HealthStream`, shared with the
Registrar's health watch.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import grpc
import grpc.aio

from .._backoff import Backoff
from .._balancer.subchannel import Subchannel
from .._healthproto import HealthStream
from .._logsafe import Labelled, safe

__all__ = ["UNHEALTHY", "HealthCheck", "SubchannelHealth"]


# The hold reason of a subchannel without a SERVING answer on its current connection.
UNHEALTHY = "unhealthy"

# Health states besides the protocol's own (SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN).
PENDING = "PENDING"  # no answer yet on this connection
FAILED = "FAILED"  # the Watch call ended without UNIMPLEMENTED; opened again after a backoff
UNIMPLEMENTED = "UNIMPLEMENTED"  # no health service: healthy
SERVING = "SERVING"


_State = grpc.ChannelConnectivity


class HealthCheck:
    """A pool's health checking: which service to ask about, and what it logged already."""

    def __init__(self, log: Labelled, service: str) -> None:
        self.log = log
        self.service = service
        # Addresses already reported as having no health service.
        self.unimplemented: set[str] = set()


class SubchannelHealth:
    """One subchannel's health, as its ``Watch`` stream last told."""

    def __init__(self, check: HealthCheck) -> None:
        self.check = check
        self.status = PENDING

    @property
    def pending(self) -> bool:
        """Whether no answer has come yet on the current connection (or none is open)."""
        return self.status == PENDING

    @property
    def healthy(self) -> bool:
        """Whether the subchannel may take calls, as far as its health goes."""
        return self.status in (SERVING, UNIMPLEMENTED)

    def restart(self, sub: Subchannel) -> None:
        """Forget the verdict: a new connection (or none) must earn its own."""
        self.status = PENDING
        sub.hold(UNHEALTHY)

    def _set(self, sub: Subchannel, status: str, changed: Callable[[Subchannel], None]) -> None:
        if status == self.status:
            return
        previous, self.status = self.status, status
        routine = previous in (PENDING, FAILED) and self.healthy
        if status not in (PENDING, FAILED) and not routine:
            # The first SERVING on each connection is routine, and watch() tells how a stream
            # ended; what a server says about itself is news.
            self.check.log.info(
                "endpoint %s health %s -> %s",
                safe(sub.address),
                previous,
                status,
            )
        if self.healthy:
            sub.release(UNHEALTHY)
        else:
            sub.hold(UNHEALTHY)
        changed(sub)

    async def watch(
        self, sub: Subchannel, channel: grpc.aio.Channel, changed: Callable[[Subchannel], None]
    ) -> None:
        """Follow the health of ``sub`` over ``channel``, until cancelled or UNIMPLEMENTED."""
        check = self.check
        # grpc's connection backoff, as grpc-go's health client uses.
        backoff = Backoff(initial=1.0, cap=120.0, multiplier=1.6)
        while True:
            answered, why = await self._stream(sub, channel, changed)
            if self.status == UNIMPLEMENTED:
                return
            self._set(sub, FAILED, changed)
            if answered:
                backoff.reset()
                check.log.info(
                    "health watch of %s ended (%s); opening it again",
                    safe(sub.address),
                    why,
                )
            else:
                delay = backoff.next_delay()
                check.log.info(
                    "health watch of %s failed (%s); trying again in %.1f s",
                    safe(sub.address),
                    why,
                    delay,
                )
                await anyio.sleep(delay)
            self._set(sub, PENDING, changed)

    async def _stream(
        self,
        sub: Subchannel,
        channel: grpc.aio.Channel,
        changed: Callable[[Subchannel], None],
    ) -> tuple[bool, str]:
        """One Watch call: whether it brought an answer, and how it ended."""
        stream = HealthStream(channel, self.check.service)
        try:
            while (status := await stream.next()) is not None:
                self._set(sub, status, changed)
        except Exception as exc:
            # An answer that does not decode, say: the server's fault, not the pool's.
            return stream.answered, safe(repr(exc))
        finally:
            await stream.close()
        if stream.unimplemented:
            self._unimplemented(sub, changed)
            return stream.answered, "UNIMPLEMENTED"
        return stream.answered, stream.why or "the stream ended"

    def _unimplemented(self, sub: Subchannel, changed: Callable[[Subchannel], None]) -> None:
        check = self.check
        if sub.address not in check.unimplemented:
            check.unimplemented.add(sub.address)
            # gRFC A17: a server without the health service is a deployment error, logged at
            # ERROR (grpc core does the same), though the endpoint keeps taking calls.
            check.log.error(
                "endpoint %s has no health service (UNIMPLEMENTED); it counts as healthy",
                safe(sub.address),
            )
        self._set(sub, UNIMPLEMENTED, changed)
