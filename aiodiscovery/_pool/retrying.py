"""Calls the pool may send again on another endpoint: retries (gRFC A6) and transparent retries.

A unary-unary or unary-stream call returns one of these instead of the grpc.aio call of its
first attempt. Each attempt is an ordinary call started through :meth:`Pool.attempt` (so on
a subchannel picked anew, preferring one not tried yet); its done callback decides, from its
status alone, whether the call ends with it or goes on:

- **Transparent retry**, with or without a policy: an attempt that failed ``UNAVAILABLE`` with
  grpc's "failed to connect to all addresses" never left this client (its subchannel had no
  connection, so grpc failed it while picking a transport for it). It is sent once more, at
  once, on another READY endpoint; that costs no attempt of the policy and no throttle token.
  Nothing else is retried without a policy: any other failure may have reached the server.
- **retryPolicy**: an attempt that failed with one of ``retryableStatusCodes`` is retried after
  ``random(0.8, 1.2) * min(initialBackoff * backoffMultiplier ** n, maxBackoff)`` (or the server's
  ``grpc-retry-pushback-ms``; a negative or garbled one means "do not retry"), up to
  ``maxAttempts`` attempts, while the retry throttle allows it, and never past the call's
  deadline (a retry that could not start before it is not made: the call ends with the last
  attempt's error). A retry carries ``grpc-previous-rpc-attempts`` (the attempts made before
  it), as grpc core's do. An attempt whose server sent initial metadata with entries is final
  (A6's commit point; headers without entries cannot be told apart from none through grpcio's
  API, so such an attempt may be retried where grpc core would not),
  and so is a cancelled one (``CANCELLED`` is never retried: it is the caller's doing, or the
  channel's close).
- A unary-stream call is retried only until the application has received something from it (a
  message or the initial metadata): from then on its attempt is final. grpc.aio holds a failed
  stream's status back until its messages are read, so a stream that answered is committed
  before its failure is known.

Cancelling the call (or the task awaiting it) cancels the attempt in flight and any retry. The
call object behaves like grpc.aio's own: awaiting, reading, ``code()``, ``details()``,
metadata, ``time_remaining()``, ``add_done_callback()`` all refer to the final attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._balancer.callstatus import CANCELLED, OK, UNAVAILABLE, Ended, ended, status_code
from .._balancer.deferred import DeferredCall
from .._balancer.latecall import LOCALLY_CANCELLED, LateCall
from .._balancer.subchannel import MethodKey, Subchannel
from .._logsafe import safe
from .._resilience.retrypolicy import MethodRetry, pushback_delay

if TYPE_CHECKING:
    from .pool import Pool

__all__ = [
    "NEVER_SENT",
    "PREVIOUS_ATTEMPTS",
    "PUSHBACK",
    "RetryingUnaryStreamCall",
    "RetryingUnaryUnaryCall",
]


# grpc's details for a call failed while picking a connection for it (pick_first without one).
NEVER_SENT = ("failed to connect to all addresses",)
PUSHBACK = "grpc-retry-pushback-ms"
PREVIOUS_ATTEMPTS = "grpc-previous-rpc-attempts"
# A pushback that says "do not retry".
_STOP = -1.0


class _Retrying(LateCall):
    """The attempts of one call; settles on the final one."""

    # As in LateCall: defaults in the class, set on the instance only when they change.
    _sub: Subchannel | None = None
    _tried: list[Subchannel] | None = None
    # Attempts after the first made by the policy (transparent ones do not count).
    _retries = 0
    # Retries since the last pushback: the exponent of the backoff.
    _backoffs = 0
    _transparent_used = False
    _cancelling = False
    # Reads waiting on the current attempt: while one is, the reader decides about the
    # attempt's end, as a message it is about to return commits the call.
    _reading = 0
    _timer: asyncio.TimerHandle | None = None
    # Made only when someone waits for the next attempt or the end.
    _change: asyncio.Event | None = None

    def __init__(  # noqa: PLR0917 (the one constructor _multicallable calls on the hot path)
        self,
        pool: Pool,
        key: MethodKey,
        request: Any,
        kwargs: dict[str, Any],
        rules: MethodRetry,
        deferred: type[DeferredCall],
    ) -> None:
        limit = rules.timeout
        if limit is not None and (kwargs.get("timeout") is None or limit < kwargs["timeout"]):
            kwargs = {**kwargs, "timeout": limit}
        super().__init__(pool.target, request, kwargs)
        self._pool = pool
        self._key = key
        self._policy = rules.policy
        self._deferred = deferred
        # Later attempts start from timers and callbacks, but must see the caller's context
        # variables, as the first one did.
        self._context = contextvars.copy_context()
        # The first attempt, as a plain call would start (its errors reach the caller); the
        # call that wakes an IDLE channel learns its subchannel too, for the retries to avoid.
        self._sub, attempt = pool.attempt(deferred, key, request, kwargs)
        self._attempt: Any = attempt
        attempt.add_done_callback(self._attempt_done)

    # -- attempts ---------------------------------------------------------------------------

    def _start(self, kwargs: dict[str, Any], sub: Subchannel | None) -> None:
        """Start a later attempt (on ``sub`` if given, else on one not tried if possible)."""
        if sub is not None:
            attempt = sub.start(self._key, self._request, kwargs)
        else:
            sub, attempt = self._pool.attempt(
                self._deferred, self._key, self._request, kwargs, self._tried or ()
            )
        self._sub = sub
        self._attempt = attempt
        self._wake()
        attempt.add_done_callback(self._attempt_done)

    def _again(self, sub: Subchannel | None = None) -> None:
        """Start the next attempt, from a timer or a done callback."""
        self._timer = None
        if self._is_settled:
            return
        previous = self._attempt
        if self._sub is not None:
            self._tried = [*(self._tried or ()), self._sub]
        kwargs = self._kwargs
        if self._deadline is not None:
            kwargs = {**kwargs, "timeout": max(0.0, self._deadline - time.monotonic())}
        if self._retries:
            # gRFC A6: the server may tell a retry from a first attempt (grpc core sends it).
            previous_attempts = ((PREVIOUS_ATTEMPTS, str(self._retries)),)
            kwargs = {**kwargs, "metadata": (*(kwargs.get("metadata") or ()), *previous_attempts)}
        try:
            self._context.run(self._start, kwargs, sub)
        except Exception as exc:
            # The caller gets the last attempt's error. Expected once the channel is closing;
            # anything else is a fault of ours or of the caller's arguments, and must be seen.
            if self._pool.closed:
                self._pool.log.info("retry of %s not made: the channel is closed", self._key[1])
            else:
                self._pool.log.warning(
                    "could not start a retry of %s: %s",
                    self._key[1],
                    safe(repr(exc)),
                    exc_info=True,
                )
            self._settle(previous)

    def _attempt_done(self, attempt: Any, *, reader: bool = False) -> None:
        """Decide whether ``attempt`` ends the call; safe to call more than once."""
        if attempt is not self._attempt or self._is_settled or self._timer is not None:
            return
        if self._reading and not reader:
            return
        code = status_code(attempt)
        if self._cancelling or code is None or code in (OK, CANCELLED):
            # A cancelled attempt is the caller's doing (or the channel's close): never retried.
            self._settle(attempt)
            return
        info = ended(attempt)
        if info is None or info.initial_metadata:
            self._settle(attempt)
            return
        if code == UNAVAILABLE and self._transparent(info):
            return
        delay = self._retry_delay(code, info)
        if delay is None:
            self._settle(attempt)
            return
        self._retries += 1
        self._pool.retries += 1
        self._pool.log.debug("retrying %s in %.3f s", self._key[1], delay)
        self._timer = asyncio.get_running_loop().call_later(delay, self._again)

    def _transparent(self, info: Ended) -> bool:
        """Send a call that never left once more on another READY endpoint; True if sent."""
        if self._transparent_used or not info.details.startswith(NEVER_SENT):
            return False
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        tried = [*(self._tried or ()), *([self._sub] if self._sub is not None else ())]
        other = self._pool.other_ready(tried)
        if other is None:
            return False
        self._transparent_used = True
        self._pool.transparent_retries += 1
        self._pool.log.debug(
            "%s never left (%s); sending it to %s",
            self._key[1],
            safe(info.details),
            safe(other.address),
        )
        self._again(other)
        return True

    def _retry_delay(self, code: int, info: Ended) -> float | None:
        """The delay before the next attempt under the policy, or None for no retry."""
        policy = self._policy
        if policy is None or code not in policy.retryable_codes:
            return None
        pushback = _pushback(info.trailing_metadata)
        throttle = self._pool.retry.throttle
        if pushback == _STOP:
            if throttle is not None:
                throttle.failure()
            return None
        if throttle is not None and not throttle.failure():
            self._pool.retries_throttled += 1
            if throttle.refuse():
                self._pool.log.warning("retries throttled: too many calls fail (retryThrottling)")
            return None
        if self._retries + 1 >= policy.max_attempts:
            return None
        if pushback is None:
            delay = policy.backoff(self._backoffs)
            self._backoffs += 1
        else:
            delay = pushback
            self._backoffs = 0
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None
        return delay

    # -- waiting ----------------------------------------------------------------------------

    def _wake(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    def _mark_settled(self) -> None:
        super()._mark_settled()
        self._wake()

    async def _next_change(self) -> None:
        """Wait until another attempt starts or the call settles."""
        if self._change is None:
            self._change = asyncio.Event()
        await self._change.wait()

    def _current(self) -> Any:
        """The attempt in flight, or None while between attempts (deciding or backing off)."""
        attempt = self._attempt
        if attempt.done():
            self._attempt_done(attempt)
        if self._is_settled or self._timer is not None or attempt is not self._attempt:
            return None
        return None if attempt.done() else attempt

    def _live(self, attempt: Any) -> bool:
        """Whether what ``attempt`` delivered is the call's: it was not given up meanwhile."""
        if self._is_settled:
            return attempt is self._real
        return attempt is self._attempt and self._timer is None

    def _commit(self, attempt: Any) -> None:
        """Make ``attempt`` final: the application has received something from it."""
        if not self._is_settled:
            self._settle(attempt)

    def _abandoned(self) -> None:
        """The task waiting on the call was cancelled: so is the call, as in grpc.aio.

        Except while it waits for an endpoint: such a call goes on for other awaiters, as any
        call waiting for an endpoint does (see DeferredCall).
        """
        attempt = self._attempt
        if not (isinstance(attempt, DeferredCall) and attempt.real is None):
            self.cancel()

    async def _on_attempts(
        self, step: Callable[[Any], Awaitable[Any]], *, reading: bool
    ) -> tuple[bool, Any]:
        """Run ``step(attempt)`` on the attempt in flight, and on the next ones while retried.

        Returns ``(True, result)`` once a step's result stands: its attempt is still the call's,
        and is now final (committed, if it was still running: the application has received
        something from it); ``(False, None)`` once the call settled some other way. ``reading``
        steps deliver messages, so they decide about their attempt's end themselves (see
        :meth:`_attempt_done`). A task cancelled in here cancels the call (:meth:`_abandoned`).
        """
        try:
            while not self._is_settled:
                attempt = self._current()
                if attempt is None:
                    await self._next_change()
                    continue
                self._reading += reading
                try:
                    result = await step(attempt)
                except grpc.aio.AioRpcError:
                    self._reading -= reading
                    if reading:
                        self._attempt_done(attempt, reader=True)
                    continue
                except BaseException:
                    self._reading -= reading
                    raise
                self._reading -= reading
                if not reading:
                    # An attempt that ended meanwhile is decided on first: its end, not this
                    # result, says whether it is final.
                    self._current()
                if self._live(attempt):
                    self._commit(attempt)
                    return True, result
                # Given up while the step was on its way: what it brought is not the call's.
        except asyncio.CancelledError:
            self._abandoned()
            raise
        return False, None

    # -- Call -------------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the call: its attempt in flight, and any retry to come."""
        attempt = self._attempt
        if not self._is_settled and attempt.done():
            self._attempt_done(attempt)
            attempt = self._attempt
        if self._is_settled:
            return super().cancel()
        self._cancelling = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            return self.end(grpc.StatusCode.CANCELLED, LOCALLY_CANCELLED, local=True)
        attempt.cancel()
        # grpc.aio's cancel() finishes the call at once; settle even if its callback is late.
        self._commit(attempt)
        return True

    def time_remaining(self) -> float | None:
        """Seconds before the call's deadline (over all attempts), or ``None`` without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())


class RetryingUnaryUnaryCall(_Retrying, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary-unary call the pool may retry; behaves like grpc.aio's ``UnaryUnaryCall``."""

    def __await__(self) -> Generator[Any, None, Any]:
        attempt = self._attempt
        if not self._is_settled and self._timer is None and not attempt.done():
            # Most calls: their only attempt, awaited as grpc.aio's own, with nothing between.
            try:
                return (yield from attempt.__await__())
            except grpc.aio.AioRpcError:
                pass
            except asyncio.CancelledError:
                self._abandoned()
                raise
        return (yield from self._response().__await__())

    async def _response(self) -> Any:
        answered, response = await self._on_attempts(_awaited, reading=False)
        if answered:
            return response
        return await (await self._resolve())


class RetryingUnaryStreamCall(_Retrying, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """A unary-stream call the pool may retry until it delivers something."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    async def read(self) -> Any:
        """Read one response, or ``grpc.aio.EOF``."""
        answered, message = await self._on_attempts(_read, reading=True)
        if answered:
            return message
        return await (await self._resolve()).read()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """The server's initial metadata; commits the call to its current attempt."""
        await self._on_attempts(_initial_metadata, reading=False)
        return await super().initial_metadata()

    async def wait_for_connection(self) -> None:
        """Wait until the request has been sent on an attempt that goes on (or the call ends)."""
        await self._on_attempts(_wait_for_connection, reading=False)
        await super().wait_for_connection()


async def _awaited(attempt: Any) -> Any:
    return await attempt


async def _read(attempt: Any) -> Any:
    return await attempt.read()


async def _initial_metadata(attempt: Any) -> Any:
    return await attempt.initial_metadata()


async def _wait_for_connection(attempt: Any) -> None:
    await attempt.wait_for_connection()


def _pushback(metadata: tuple[tuple[str, str | bytes], ...]) -> float | None:
    """The server's ``grpc-retry-pushback-ms`` in seconds: None if absent, ``_STOP`` if "never"."""
    values = [value for key, value in metadata if key == PUSHBACK]
    if not values:
        return None
    if len(values) > 1:
        return _STOP
    delay = pushback_delay(values[0])
    return _STOP if delay is None else delay
