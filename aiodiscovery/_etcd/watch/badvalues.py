"""Log lines about bad registry values that scale with the problems, not with the data.

Anyone who may write under a prefix can put 2,000 undecodable values there; a warning per value
at every client start and every relist would bury everything else in the log. A load (a list or
relist) gives one WARNING with the count and the first few keys, each key at DEBUG; a key that
turns bad while watched gets its own WARNING, at most :data:`BURST` of them per :data:`WINDOW`
seconds, the rest at DEBUG and counted in the next WARNING.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from ..._logsafe import safe

__all__ = ["BURST", "SHOWN", "WINDOW", "BadValueLog"]

#: Keys a load's summary names.
SHOWN = 3
#: Per-key warnings while watching: at most BURST in any WINDOW seconds.
BURST = 10
WINDOW = 60.0
# Keys and reasons come from anyone who may write to etcd: enough to recognise them, no more.
_CLIP = 200


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else f"{text[:_CLIP]}...({len(text)} characters)"


class BadValueLog:
    """What one reader of ``prefix`` says about values that name no usable endpoint."""

    def __init__(
        self,
        logger: logging.Logger,
        prefix: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._prefix = prefix
        self._clock = clock
        self._recent: list[float] = []
        self._suppressed = 0

    def loaded(self, bad: Sequence[tuple[str, str]]) -> None:
        """One load found ``bad`` (key, reason) pairs: one WARNING for all, each key at DEBUG."""
        if not bad:
            return
        for key, reason in bad:
            self._logger.debug("skipping endpoint %s: %s", safe(_clip(repr(key))), safe(reason))
        shown = "; ".join(
            f"{safe(_clip(repr(key)))}: {safe(_clip(reason))}" for key, reason in bad[:SHOWN]
        )
        more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        self._logger.warning(
            "%r: skipping %d value%s that name no usable endpoint: %s%s "
            "(each key is logged at DEBUG on %s)",
            safe(self._prefix),
            len(bad),
            "" if len(bad) == 1 else "s",
            shown,
            more,
            self._logger.name,
        )

    def changed(self, key: str, reason: str) -> None:
        """``key`` turned bad while watched: a WARNING of its own, unless too many came lately."""
        now = self._clock()
        self._recent = [t for t in self._recent if now - t < WINDOW]
        text = f"skipping endpoint {safe(_clip(repr(key)))}: {safe(_clip(reason))}"
        if len(self._recent) >= BURST:
            self._suppressed += 1
            self._logger.debug("%s", text)
            return
        self._recent.append(now)
        if self._suppressed:
            text += (
                f" ({self._suppressed} more such lines in the last minutes went to DEBUG: "
                f"more than {BURST} in {WINDOW:g} s)"
            )
            self._suppressed = 0
        self._logger.warning("%s", text)
