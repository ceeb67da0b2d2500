"""StateCell: a state value that tasks wait on, and that never leaves its final state."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

__all__ = ["StateCell"]

S = TypeVar("S", bound=enum.Enum)


class StateCell(Generic[S]):
    """Holds a state; :meth:`set` wakes every waiter, and nothing moves out of ``final``."""

    def __init__(self, initial: S, final: S) -> None:
        self.value = initial
        self.final = final
        self._changed = anyio.Event()

    def set(self, state: S) -> None:
        """Move to ``state`` (never out of the final one) and wake the waiters."""
        if state is self.value or self.value is self.final:
            return
        self.value = state
        # One event per change: waiters wake, re-check their condition and wait on the next one.
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[], bool], owner: object) -> None:
        """Return once ``predicate()`` holds; :class:`RuntimeError` naming ``owner`` once the
        state is final."""
        while not predicate():
            if self.value is self.final:
                raise RuntimeError(f"{owner} is closed")
            await self._changed.wait()
