"""EndpointSet: an immutable snapshot of a service's endpoints."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ._endpoint import Endpoint

__all__ = ["EndpointSet"]


class EndpointSet(Mapping[str, Endpoint]):
    """An immutable snapshot of a service's endpoints (etcd key -> :class:`Endpoint`).

    ``revision`` is the etcd revision the snapshot reflects; :meth:`mod_revision` tells when each
    key was last written, so a re-registration with an unchanged value is still visible. Equality
    compares the endpoints only.
    """

    __slots__ = ("_endpoints", "_mod_revisions", "revision")

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint] | None = None,
        revision: int = 0,
        mod_revisions: Mapping[str, int] | None = None,
    ) -> None:
        self._endpoints = dict(endpoints or {})
        self._mod_revisions = dict(mod_revisions or {})
        self.revision = revision

    def __getitem__(self, key: str) -> Endpoint:
        return self._endpoints[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def at_revision(self, revision: int) -> EndpointSet:
        """The same endpoints, stamped with a newer ``revision`` (shares the storage, no copy)."""
        clone = EndpointSet.__new__(EndpointSet)
        clone._endpoints = self._endpoints
        clone._mod_revisions = self._mod_revisions
        clone.revision = revision
        return clone

    def mod_revision(self, key: str) -> int:
        """The etcd revision of the last write of ``key`` (0 if unknown or absent)."""
        return self._mod_revisions.get(key, 0)

    def addresses(self) -> list[str]:
        """The distinct addresses, in key order (several keys may name one address)."""
        return list(dict.fromkeys(e.addr for e in self._endpoints.values()))

    def __repr__(self) -> str:
        return f"EndpointSet(revision={self.revision}, endpoints={self._endpoints!r})"
