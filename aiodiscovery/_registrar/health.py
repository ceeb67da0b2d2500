"""Following a server's status through the standard gRPC health protocol (``grpc.health.v1``).

:class:`HealthWatch` keeps one ``grpc.health.v1.Health/Watch`` stream open to a server and says
whether one of its services (``""``: the whole server) is SERVING, for a Registrar that registers
the server only while it is. Any implementation of the protocol works, such as
``grpc_health.v1.health.aio.HealthServicer`` from ``grpcio-health-checking``.

A stream that breaks is opened again at once, then with jittered backoff. Meanwhile the last status
holds for ``grace`` seconds (a reconnect after a server's GOAWAY takes milliseconds and must not
flap the registry); past that, no word from the server counts as not serving, because a server
whose health service cannot be reached cannot be reached by clients either.
"""

from __future__ import annotations

import logging
import math

import anyio
import grpc

from .._backoff import Backoff
from .._exceptions import HealthCheckError
from .._healthproto import WATCH_METHOD, HealthStream, ServingStatus
from .._logsafe import safe
from .timing import RETRY_CAP, RETRY_INITIAL

__all__ = ["DEFAULT_HEALTH_GRACE", "HealthWatch"]

logger = logging.getLogger("aiodiscovery.registrar")

#: How long the last health status holds while the stream to the server is being reopened.
DEFAULT_HEALTH_GRACE = 1.0
# Reconnect soon after a server's listener comes back (gRPC's default backoff grows to 120 s).
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


#: The status shown once the server has not answered for longer than the grace.
UNREACHABLE = "UNREACHABLE"
#: The status shown when the server answers that it has no health service.
UNIMPLEMENTED = "UNIMPLEMENTED"


class HealthWatch:
    """Follows the health status of ``service`` on the server at ``address``.

    ``channel`` is the channel to ask (a secure one for a TLS server); by default one is made to
    ``address`` and closed by :meth:`close`. ``label`` names what the log lines are about.
    """

    def __init__(
        self,
        address: str,
        service: str,
        *,
        channel: grpc.aio.Channel | None = None,
        grace: float = DEFAULT_HEALTH_GRACE,
        label: str = "",
    ) -> None:
        if not isinstance(service, str):
            raise TypeError(f"health_check must be a service name (a str), got {service!r}")
        if not grace >= 0:
            raise ValueError(f"health_grace must be zero or more seconds, got {grace!r}")
        self.address = address
        self.service = service
        self.grace = grace
        self.label = label
        self._channel = channel
        self._own_channel = channel is None
        self._stream: HealthStream | None = None
        #: The last status heard (``"SERVING"``, ``"NOT_SERVING"``, ...), ``"UNREACHABLE"`` once
        #: the server has been silent past the grace, ``None`` before the first.
        self.status: str | None = None
        #: Whether the service counts as serving now.
        self.serving = False
        #: ``Health/Watch`` streams opened.
        self.streams = 0
        self._changed = anyio.Event()
        self._deadline = math.inf
        self._scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<HealthWatch {self.address} service={self.service!r} {self.status}>"

    def _what(self) -> str:
        return f"{self.label}: health of service {self.service!r} at {safe(self.address)}"

    # -- waiting --------------------------------------------------------------------------------

    async def wait_serving(self) -> None:
        """Return once the service counts as serving."""
        while not self.serving:
            await self._changed.wait()

    async def wait_not_serving(self) -> None:
        """Return once the service no longer counts as serving."""
        while self.serving:
            await self._changed.wait()

    # -- the stream -----------------------------------------------------------------------------

    def _open(self) -> HealthStream:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        self.streams += 1
        # Waits for the server to listen instead of failing at once: a server that is restarting
        # its listener is followed again as soon as it is back.
        return HealthStream(self._channel, self.service, wait_for_ready=True)

    async def start(self, deadline: float, timeout: float) -> None:
        """Open the stream and take the first status before ``deadline`` (anyio's clock), the
        end of a ``timeout`` of that many seconds.

        Raises :class:`HealthCheckError` if the server has no health service, or sends no status
        in time.
        """
        backoff = Backoff(initial=RETRY_INITIAL, cap=RETRY_CAP)
        last = "no answer"
        with anyio.move_on_at(deadline):
            while True:
                stream = self._open()
                try:
                    status = await stream.next()
                except BaseException:
                    await stream.close()
                    raise
                if status is not None:
                    self._stream = stream
                    self._receive(status)
                    return
                await stream.close()
                if stream.unimplemented:
                    raise HealthCheckError(
                        f"the server at {safe(self.address)} has no gRPC health service "
                        f"({WATCH_METHOD} is UNIMPLEMENTED): add one (such as "
                        "grpc_health.v1.health.aio.HealthServicer) or drop health_check="
                    )
                last = stream.why or last
                await backoff.sleep()
        raise HealthCheckError(
            f"no health status for service {self.service!r} from {safe(self.address)} within "
            f"{timeout:g} s (last error: {last})"
        )

    async def follow(self) -> None:
        """Follow the status until cancelled, reopening the stream whenever it breaks."""
        backoff = Backoff(initial=RETRY_INITIAL, cap=RETRY_CAP)
        while True:
            with anyio.CancelScope(deadline=self._deadline) as self._scope:
                try:
                    why = await self._read(backoff)
                except Exception as exc:
                    logger.exception("%s: unexpected error", self._what())
                    why = f"unexpected error {exc!r}"
                self._lost(why)
                await backoff.sleep()
            self._scope = None
            if self._deadline <= anyio.current_time():
                self._silent()

    async def _read(self, backoff: Backoff) -> str:
        """Read statuses from one stream until it ends; return why it ended."""
        stream, self._stream = self._stream or self._open(), None
        try:
            while (status := await stream.next()) is not None:
                self._receive(status)
                backoff.reset()
        finally:
            await stream.close()
        if stream.unimplemented:
            self._unimplemented()
        return stream.why or "the stream ended"

    async def close(self) -> None:
        """Close the stream, and the channel if this watch made it."""
        with anyio.CancelScope(shield=True):
            if self._stream is not None:
                await self._stream.close()
                self._stream = None
            if self._own_channel and self._channel is not None:
                await self._channel.close()
                self._channel = None

    # -- status changes -------------------------------------------------------------------------

    def _receive(self, status: str) -> None:
        self._deadline = math.inf
        if self._scope is not None:
            self._scope.deadline = math.inf
        self._set(status)

    def _lost(self, why: str) -> None:
        if self.status in (None, UNREACHABLE, UNIMPLEMENTED) or self._deadline < math.inf:
            logger.debug("%s: stream ended (%s); opening it again", self._what(), why)
            return
        logger.debug(
            "%s: stream ended (%s); opening it again, status %s holds for %g s",
            self._what(),
            why,
            self.status,
            self.grace,
        )
        self._deadline = anyio.current_time() + self.grace
        if self._scope is not None:
            self._scope.deadline = self._deadline

    def _silent(self) -> None:
        self._deadline = math.inf
        if self.serving:
            logger.warning(
                "%s: no status for %g s (the server cannot be reached); it counts as not serving",
                self._what(),
                self.grace,
            )
        self._set(UNREACHABLE)

    def _unimplemented(self) -> None:
        if self.status != UNIMPLEMENTED:
            logger.warning(
                "%s: the server no longer has a health service (UNIMPLEMENTED); it counts as "
                "not serving",
                self._what(),
            )
        self._set(UNIMPLEMENTED)

    def _set(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        self.serving = status == ServingStatus.SERVING.name
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
