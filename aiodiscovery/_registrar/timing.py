"""The timing rules every request under a lease follows.

:func:`attempt_timeout` gives one request a share of the TTL, so that a silent member is left in
time; :func:`retry_until` retries with the backoff every registration step shares, and surfaces at
once the errors no retry fixes (:data:`PERMANENT_CODES`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from .._backoff import Backoff
from .._exceptions import EtcdError, EtcdUnavailableError
from .._logsafe import safe

__all__ = ["PERMANENT_CODES", "RETRY_CAP", "RETRY_INITIAL", "attempt_timeout", "retry_until"]

logger = logging.getLogger("aiodiscovery.registrar")

T = TypeVar("T")

RETRY_INITIAL = 0.05
# Low enough that a registration is back within about a second of etcd answering again, and
# jittered so that every service of a restarted cluster does not come back in the same instant.
RETRY_CAP = 1.0
#: Errors no retry can fix; at start they surface at once instead of after the whole timeout.
PERMANENT_CODES = frozenset(
    {"INVALID_ARGUMENT", "OUT_OF_RANGE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)
# A request that takes longer than this cannot help keep a lease of the given TTL alive: the next
# one goes to another member instead (see _members).
_MIN_ATTEMPT = 0.5


def attempt_timeout(client_timeout: float, ttl: int) -> float:
    """How long one request of a (re)registration may take under a lease of ``ttl`` seconds.

    A share of the TTL, so that a member that does not answer is left (the client abandons a
    member whose request timed out) while the lease can still be saved on another one.
    """
    return min(client_timeout, max(_MIN_ATTEMPT, ttl / 3))


async def retry_until(
    deadline: float, attempt: Callable[[], Awaitable[T]], doing: str, failure: str
) -> T:
    """Return what ``attempt()`` returns, retried with backoff until ``deadline`` (anyio's clock).

    A permanent error is raised at once; at the deadline, :class:`EtcdUnavailableError` says
    ``failure`` and the last error. ``doing`` names the attempt in log lines.
    """
    backoff = Backoff(initial=RETRY_INITIAL, cap=RETRY_CAP)
    last: EtcdError | None = None
    # etcd that is starting or electing a leader answers within moments: retry until the deadline
    # rather than fail on the first UNAVAILABLE.
    with anyio.move_on_at(deadline):
        while True:
            try:
                return await attempt()
            except EtcdError as exc:
                if exc.code in PERMANENT_CODES:
                    raise
                last = exc
                logger.debug("%s: %s; retrying", doing, safe(exc))
            await backoff.sleep()
    raise EtcdUnavailableError(
        f"{failure} (last error: {last or 'none, no answer'})",
        code=last.code if last is not None else "DEADLINE_EXCEEDED",
        details=last.details if last is not None else "",
    ) from last
