"""What the watch machinery needs of a client, so that it can live below the client's module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .members import Member, MemberSet

__all__ = ["Transport"]


class Transport(Protocol):
    """The part of :class:`~aiodiscovery.EtcdClient` that lists and watches use."""

    timeout: float
    # What one endpoint may hold in memory (see decode_endpoint's budget); None: no bound.
    metadata_budget: int | None

    @property
    def members(self) -> MemberSet:
        """The members and the one in use."""

    def stream_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for a long-lived stream (token, require-leader)."""

    async def connect(self) -> None:
        """Open the channels if needed."""

    async def unary(
        self, method: Callable[[Member], Any], request: Any, *, timeout: float | None = None
    ) -> Any:
        """One unary request to the member in use."""

    async def reauthenticate(self, error: object = None) -> bool:
        """Renew the token after a stream was refused for it."""
