"""EndpointSet: an immutable snapshot of a service's endpoints, cheap to take after every change.

A snapshot wraps a persistent hash map (``immutables.Map``, a HAMT): a change makes a new map
that shares all but a few nodes with the old one, so taking a snapshot after each change costs
the same with 100,000 endpoints as with 10, where copying a dict would cost the whole set. (Right
after a list it wraps the list's own dict, which nobody changes: the first change builds the map,
so that loading a big service pays for no map it may never need.) The
prefix watch that publishes snapshots also keeps a short :class:`ChangeLog`, so a consumer that
follows snapshots (the pool) can ask which keys changed since the last one it applied instead of
comparing whole sets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import immutables

from .endpoint import Endpoint

__all__ = ["ChangeLog", "EndpointSet", "Entry"]


class Entry(NamedTuple):
    """What the registry holds for one key: its endpoint, lease and last write's revision."""

    endpoint: Endpoint
    lease: int
    # A re-put of the same value is news too (a server back on its old address).
    mod_revision: int


# A snapshot's storage: a persistent map, or a dict that nobody changes any more (what a list
# returns: turned into a map only when the first change comes, so a load builds no map).
Entries = immutables.Map[str, Entry] | Mapping[str, Entry]


class ChangeLog:
    """The keys changed by each of the last ``limit`` published batches of one prefix watch."""

    def __init__(self, limit: int = 4096) -> None:
        #: The number of batches recorded so far; a snapshot remembers the value it was taken at.
        self.seq = 0
        self._batches: deque[tuple[str, ...] | None] = deque(maxlen=limit)

    def record(self, keys: tuple[str, ...] | None) -> None:
        """Note one batch that changed ``keys`` (None: any key may have changed)."""
        self.seq += 1
        self._batches.append(keys)

    def changed(self, after: int, upto: int) -> set[str] | None:
        """The keys changed by batches ``after + 1`` to ``upto``; None once forgotten, or if
        any of them could have changed any key."""
        if after < self.seq - len(self._batches) or upto > self.seq:
            return None
        keys: set[str] = set()
        # From the newest back: a consumer that keeps up reads one or two batches.
        seq = self.seq
        for batch in reversed(self._batches):
            if seq <= after:
                break
            if seq <= upto:
                if batch is None:
                    return None
                keys.update(batch)
            seq -= 1
        return keys


class EndpointSet(Mapping[str, Endpoint]):
    """An immutable snapshot of a service's endpoints (etcd key -> :class:`Endpoint`).

    ``revision`` is the etcd revision the snapshot reflects; :meth:`mod_revision` tells when each
    key was last written, so a re-registration with an unchanged value is still visible. It
    iterates in key order; lookups, ``in`` and ``len`` cost the same whatever its size. Equality
    compares the endpoints only.
    """

    __slots__ = ("_entries", "_log", "_order", "_seq", "revision")

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint] | None = None,
        revision: int = 0,
        mod_revisions: Mapping[str, int] | None = None,
    ) -> None:
        mods = mod_revisions or {}
        items = (endpoints or {}).items()
        self._entries: Entries = {
            key: Entry(endpoint, 0, mods.get(key, 0)) for key, endpoint in items
        }
        self._order: list[str] | None = None
        self._log: ChangeLog | None = None
        self._seq = 0
        self.revision = revision

    @classmethod
    def _of(
        cls, entries: Entries, revision: int, log: ChangeLog | None = None, seq: int = 0
    ) -> EndpointSet:
        """A snapshot of ``entries`` (shared, not copied), taken at ``seq`` of ``log``."""
        snapshot = cls.__new__(cls)
        snapshot._entries = entries
        snapshot._order = None
        snapshot._log = log
        snapshot._seq = seq
        snapshot.revision = revision
        return snapshot

    def __getitem__(self, key: str) -> Endpoint:
        return self._entries[key].endpoint

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        if self._order is None:
            # The map's own order depends on string hashing, which differs between processes.
            self._order = sorted(self._entries)
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._entries)

    def at_revision(self, revision: int) -> EndpointSet:
        """The same endpoints, stamped with a newer ``revision`` (shares the storage, no copy)."""
        clone = EndpointSet._of(self._entries, revision, self._log, self._seq)
        clone._order = self._order
        return clone

    def mod_revision(self, key: str) -> int:
        """The etcd revision of the last write of ``key`` (0 if unknown or absent)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.mod_revision

    def entry(self, key: str) -> Entry | None:
        """Everything known about ``key`` (endpoint, lease, mod revision), or None if absent."""
        return self._entries.get(key)

    def changed_since(self, older: EndpointSet) -> set[str] | None:
        """The keys that may differ from ``older``, when known without comparing both sets.

        Known when both snapshots come from the same watch and ``older`` is recent (the watch
        remembers the last few thousand changes); None otherwise.
        """
        log = self._log
        if log is None or older._log is not log or older._seq > self._seq:
            return None
        return log.changed(older._seq, self._seq)

    def addresses(self) -> list[str]:
        """The distinct addresses, in key order (several keys may name one address)."""
        return list(dict.fromkeys(self[key].addr for key in self))

    def __repr__(self) -> str:
        shown = {key: self[key] for key in self}
        return f"EndpointSet(revision={self.revision}, endpoints={shown!r})"
