"""The rules for etcd keys and lease TTLs that the manager, the registrar and the CLI share."""

from __future__ import annotations

__all__ = ["MAX_TTL", "check_key", "check_ttl"]

#: etcd's MaxLeaseTTL: it refuses a longer lease.
MAX_TTL = 9_000_000_000


def check_key(prefix: str, key: str) -> str:
    """Return ``key`` if it names an endpoint under ``prefix`` (which ends in ``/``), else raise
    :class:`ValueError` saying what an endpoint key looks like."""
    if not isinstance(key, str):
        raise TypeError(f"an endpoint key must be a string, got {type(key).__name__}")
    if not key.startswith(prefix) or key == prefix:
        raise ValueError(
            f"key {key!r} is outside the service prefix {prefix!r}; endpoint keys look "
            f"like {prefix + '<id>'!r}"
        )
    return key


def check_ttl(ttl: object) -> int:
    """Return ``ttl`` if it is a whole number of seconds etcd accepts for a lease, else raise
    :class:`ValueError`."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be a whole number of seconds, 1 to {MAX_TTL}, got {ttl!r}")
    return ttl
