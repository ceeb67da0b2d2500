"""What ``aiodiscovery demo`` was asked."""

from __future__ import annotations

from dataclasses import dataclass

from .._settings import ConnectSettings

__all__ = ["DemoOptions"]


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings; ``settings`` is ``None`` for the embedded etcd."""

    settings: ConnectSettings | None = None
    service: str | None = None
    phase_seconds: float = 3.0
    callers: int = 4
    rate: float = 20.0
    ttl: int = 2
