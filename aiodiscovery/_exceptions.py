"""Exceptions raised by aiodiscovery."""

from __future__ import annotations

__all__ = [
    "AiodiscoveryError",
    "AuthenticationError",
    "DecodeError",
    "EtcdError",
    "EtcdUnavailableError",
    "HealthCheckError",
    "LeaseNotFoundError",
    "PermissionDeniedError",
    "TransactionTooLargeError",
]


class AiodiscoveryError(Exception):
    """Base class of every error this package raises on purpose."""


class DecodeError(AiodiscoveryError, ValueError):
    """An etcd value under a service prefix is not a valid endpoint record.

    ``key`` names the etcd key whose value failed, ``reason`` says why.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"cannot decode endpoint at key {key!r}: {reason}")


class EtcdError(AiodiscoveryError):
    """etcd answered a request with an error.

    ``code`` is the gRPC status code name (``"UNAVAILABLE"``, ``"NOT_FOUND"``, ...) and ``details``
    etcd's own message.
    """

    def __init__(self, message: str, *, code: str = "UNKNOWN", details: str = "") -> None:
        self.code = code
        self.details = details
        super().__init__(message)


class AuthenticationError(EtcdError):
    """etcd refused the user name and password, or a call for want of a valid auth token.

    ``username`` names the user when known; the password never appears in the message.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "UNAUTHENTICATED",
        details: str = "",
        username: str | None = None,
    ) -> None:
        self.username = username
        super().__init__(message, code=code, details=details)


class EtcdUnavailableError(EtcdError, ConnectionError):
    """No etcd member could be reached (or none answered in time)."""


class LeaseNotFoundError(EtcdError):
    """A put named a lease that etcd does not know (never granted, expired or revoked)."""


class TransactionTooLargeError(AiodiscoveryError, ValueError):
    """An update needs more operations than etcd accepts in one transaction."""

    def __init__(self, operations: int, limit: int) -> None:
        self.operations = operations
        self.limit = limit
        super().__init__(
            f"update has {operations} operations but etcd accepts at most {limit} in one "
            f"transaction (etcd's --max-txn-ops); split it into several update() calls"
        )


class PermissionDeniedError(EtcdError):
    """etcd refuses to let this user read the prefix (a fresh token did not help)."""


class HealthCheckError(AiodiscoveryError):
    """A server's health cannot be followed: it has no health service (the ``Health/Watch``
    call is UNIMPLEMENTED), or it gave no status in time."""
