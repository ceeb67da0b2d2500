"""Jittered exponential backoff shared by every retry loop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Exponential backoff with "equal" jitter and a cap.

    Each :meth:`next_delay` doubles the ceiling (``initial * multiplier ** attempt``, at most
    ``cap``) and draws the delay uniformly between half the ceiling and the ceiling, so many
    clients that lost the same etcd member do not come back in lock-step, yet a retry never comes
    sooner than half the planned delay. :meth:`reset` after a success.
    """

    initial: float = 0.05
    cap: float = 5.0
    multiplier: float = 2.0
    attempt: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.multiplier < 1:
            raise ValueError("Backoff needs 0 < initial <= cap and multiplier >= 1")

    def next_delay(self) -> float:
        """Return the delay before the next retry and count the attempt."""
        ceiling = min(self.cap, self.initial * self.multiplier**self.attempt)
        if ceiling < self.cap:
            # Stop counting at the cap: a loop that retries forever must not overflow the power.
            self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from the initial delay (call after a success)."""
        self.attempt = 0

    async def sleep(self) -> float:
        """Sleep for :meth:`next_delay` seconds (cancellable) and return the delay slept."""
        delay = self.next_delay()
        await anyio.sleep(delay)
        return delay
