"""Deterministic subsetting: which of a service's endpoints one client connects to.

Each address has a fixed position on a ring, a hash of the address (salted with the service,
so that one server registered under two services is not favoured by the same clients in both).
Each client has a position of its own and takes the addresses in the arc of length ``N / S``
that starts there (``N`` the subset size, ``S`` the number of addresses), in ring order, but
never fewer than ``ceil(0.6 N)`` nor more than ``floor(1.5 N)`` (the arc is then extended or cut
short). That is "consistent subsetting" with arcs of equal length rather than equal counts:

- *spread*: a server is in the subset of every client whose position lies in the arc of length
  ``N / S`` before it, so when clients' positions are evenly spread, every server has the same
  number of clients give or take one, whatever the gaps between servers' hashes;
- *churn*: a server leaving only takes itself out of the subsets that held it (the arcs grow by
  ``1 / S`` of their length, so they gain, but never lose, another server); a server joining
  takes its share from the clients whose arc now ends before the servers it overtakes.

A client id that is an integer (an instance number: ``0, 1, 2, ...``) is placed by the van der
Corput sequence, which spreads any run of consecutive numbers evenly over the ring, however many
clients there are; any other id is placed by its hash, which spreads clients as randomly as
random subsetting does. Google's SRE book's deterministic subsetting balances as well but moves
most connections whenever a server comes or goes; rendezvous hashing (gRPC's A68) moves as few
but spreads connections binomially. ``benchmarks/bench_subset.py`` compares the three.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Iterator

__all__ = ["Ring", "address_point", "client_point", "subset_bounds"]

_SCALE = float(1 << 64)
_BITS = 64


def _hash_point(*parts: str) -> float:
    """A position in [0, 1) from ``parts``: the same in every process and on every platform."""
    text = "\0".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / _SCALE


def address_point(address: str, salt: str) -> float:
    """Where ``address`` sits on the ring of the service named by ``salt``."""
    return _hash_point("address", salt, address)


def client_point(client_id: int | str, salt: str) -> float:
    """Where a client sits on the ring of the service named by ``salt``.

    Integers go through the van der Corput sequence (bits reversed), so consecutive ids spread
    evenly; every client of a service is turned by the same hash of ``salt``, which changes
    nothing about the spread but keeps client 0 from being first on every service.
    """
    turn = _hash_point("turn", salt)
    if isinstance(client_id, int) and not isinstance(client_id, bool):
        bits = client_id % (1 << _BITS)
        reversed_bits = int(f"{bits:0{_BITS}b}"[::-1], 2)
        return (reversed_bits / _SCALE + turn) % 1.0
    return _hash_point("client", salt, str(client_id))


def subset_bounds(size: int) -> tuple[int, int]:
    """The fewest and the most addresses a subset of ``size`` holds (when there are enough)."""
    return math.ceil(0.6 * size), max(size, math.floor(1.5 * size))


class Ring:
    """The addresses of one group (a zone, or the whole service) and this client's subset.

    Adding or removing an address, and reading the subset, cost the same whatever the number
    of addresses: only the addresses nearest after the client's position are kept in order.
    """

    def __init__(self, size: int, point: float, salt: str) -> None:
        self.size = size
        self._point = point
        self._salt = salt
        self._low, self._high = subset_bounds(size)
        # Every address (their distances after the client's position are hashed again when
        # needed: this is kept for every address of a service, so it is kept small).
        self._members: set[str] = set()
        # (offset, address) of every address closer than the horizon, in ring order.
        self._near: list[tuple[float, str]] = []
        self._horizon = 1.0

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, address: object) -> bool:
        return address in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def _offset(self, address: str) -> float:
        """How far after the client's position ``address`` sits, in [0, 1)."""
        return (address_point(address, self._salt) - self._point) % 1.0

    def reset(self, addresses: Iterable[str]) -> None:
        """Put exactly ``addresses`` on the ring (a whole set at once: no per-address sorting)."""
        self._members = set(addresses)
        self._rebuild(len(self._members))

    def add(self, address: str) -> None:
        """Put ``address`` on the ring."""
        if address in self._members:
            return
        self._members.add(address)
        offset = self._offset(address)
        if offset < self._horizon:
            bisect.insort(self._near, (offset, address))

    def discard(self, address: str) -> None:
        """Take ``address`` off the ring, if it is there."""
        if address not in self._members:
            return
        self._members.discard(address)
        offset = self._offset(address)
        if offset < self._horizon:
            near = self._near
            index = bisect.bisect_left(near, (offset, address))
            if index < len(near) and near[index][1] == address:
                del near[index]

    def subset(self) -> list[str]:
        """This client's addresses, in ring order (all of them when there are at most
        ``size``)."""
        total = len(self._members)
        if total <= self.size:
            return sorted(self._members, key=self._offset)
        width = self.size / total
        high = min(self._high, total)
        near = self._near
        short = self._horizon < 1.0 and (width >= self._horizon or len(near) < high)
        if short or len(near) > 8 * high + 64:
            # Too few kept in order to be sure of the subset, or far more than needed.
            self._rebuild(total)
        near = self._near
        chosen: list[str] = []
        for offset, address in near:
            if len(chosen) >= high or (offset >= width and len(chosen) >= self._low):
                break
            chosen.append(address)
        return chosen

    def _rebuild(self, total: int) -> None:
        """Keep in order the addresses within about three subsets' worth of the position."""
        self._horizon = min(1.0, 3.0 * self._high / max(total, 1))
        offsets = [(self._offset(a), a) for a in self._members]
        near = sorted(pair for pair in offsets if pair[0] < self._horizon)
        if len(near) < min(self._high, total):
            # Unlucky hashes: keep everything rather than loop.
            self._horizon = 1.0
            near = sorted(offsets)
        self._near = near
