"""Subsetting: which ``N`` of a service's endpoints one client connects to.

The *plan* for a set of ``S`` addresses: sort them by a hash of the address (salted with the
service, so that one server registered under two services is not favoured by the same clients in
both) and give the ``i``-th of them the ring position ``i / S``: the servers are evenly spaced,
whatever their hashes. A client with position ``p`` plans the ``N`` servers from the first one at
or after ``p``, in ring order. Clients are placed by the van der Corput sequence of their *rank*
(bits reversed: ``0, 1/2, 1/4, 3/4, 1/8, ...``), which spreads any run of ranks ``0 .. C - 1``
evenly over the ring, and fills the widest gap first when one more comes. So with dense ranks every
server is planned by ``C N / S`` clients give or take one or two, and each client holds exactly
``min(N, S)`` servers. Ranks come from the client's integer ``client_id``, or from etcd (see
:mod:`aiodiscovery._naming.ranks`); without either a client is placed by the hash of its id, which
spreads clients only as evenly as random subsetting does.

The positions of the servers move a little whenever one comes or goes, so a client does not
follow its plan blindly: it *keeps* what it holds. A server leaving is replaced by the first
server of the client's ring order it does not hold yet (so only the leaver's connections move);
a server joining is taken only by the clients whose plan now names it, each letting go of the one
server it holds that is furthest from its plan (so each joiner takes its share and no more). What a
client holds stays within a step or two of its plan, which is what it starts from.

With a health predicate, an unhealthy server it holds is kept (its health is still followed) and
the first healthy servers after it in ring order stand in until it is healthy again, so the client
keeps ``min(N, healthy)`` healthy servers.

Google's SRE book's deterministic subsetting balances as well but moves most connections whenever
a server comes or goes; rendezvous hashing (gRPC's A68) moves as few but spreads connections
binomially; Ringsteady (Google, 2022) places servers by the van der Corput sequence of their task
index, which etcd registrations do not have. ``benchmarks/bench_subset.py`` compares all four.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from array import array
from collections.abc import Callable, Iterable, Iterator

__all__ = ["Ring", "address_point", "client_point", "van_der_corput"]

_SCALE = float(1 << 64)
# How many addresses per subset member the search for stand-ins looks at, at most.
_STAND_IN_SEARCH = 8
_BITS = 64


def _hash_point(*parts: str) -> float:
    """A position in [0, 1) from ``parts``: the same in every process and on every platform."""
    text = "\0".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / _SCALE


def van_der_corput(rank: int) -> float:
    """The ``rank``-th point of the binary van der Corput sequence, in [0, 1)."""
    bits = rank % (1 << _BITS)
    return int(f"{bits:0{_BITS}b}"[::-1], 2) / _SCALE


def address_point(address: str, salt: str) -> float:
    """Where ``address`` sorts on the ring of the service named by ``salt``."""
    return _hash_point("address", salt, address)


def client_point(client_id: int | str, salt: str) -> float:
    """Where a client sits on the ring of the service named by ``salt``.

    An integer is a rank: its van der Corput point, turned by a hash of ``salt`` (which changes
    nothing about the spread but keeps rank 0 from being first on every service). Anything else
    is hashed.
    """
    if isinstance(client_id, int) and not isinstance(client_id, bool):
        return (van_der_corput(client_id) + _hash_point("turn", salt)) % 1.0
    return _hash_point("client", salt, str(client_id))


class Ring:
    """The addresses of one group (a zone, or the whole service) and the ones this client holds.

    A change costs ``O(S)`` at worst (one insertion in a sorted array); reading the subset costs
    ``O(N)``, plus a binary search per held address when what is held is not the plan. Per
    address it keeps a float and a reference in two arrays and a set entry.
    """

    def __init__(self, size: int, point: float, salt: str) -> None:
        self.size = size
        self._point = point
        self._salt = salt
        # Every address, sorted by (hash, address), in two parallel arrays: the i-th sits at
        # i / S.
        self._hashes = array("d")
        self._addresses: list[str] = []
        self._members: set[str] = set()
        # What the client holds, and the addresses that joined since the last subset().
        self._held: set[str] = set()
        self._joined: set[str] = set()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, address: object) -> bool:
        return address in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    @property
    def point(self) -> float:
        """This client's position."""
        return self._point

    def move(self, point: float) -> None:
        """Put the client at ``point`` (it got a rank): it takes its plan afresh."""
        if point != self._point:
            self._point = point
            self._held = set()
            self._joined = set()

    def reset(self, addresses: Iterable[str]) -> None:
        """Put exactly ``addresses`` on the ring (a whole set at once)."""
        members = set(addresses)
        self._joined |= members - self._members
        self._members = members
        ordered = sorted((address_point(a, self._salt), a) for a in members)
        self._hashes = array("d", (h for h, _ in ordered))
        self._addresses = [a for _, a in ordered]

    def add(self, address: str) -> None:
        """Put ``address`` on the ring."""
        if address in self._members:
            return
        self._members.add(address)
        self._joined.add(address)
        index = self._index(address)
        self._hashes.insert(index, address_point(address, self._salt))
        self._addresses.insert(index, address)

    def discard(self, address: str) -> None:
        """Take ``address`` off the ring, if it is there."""
        if address not in self._members:
            return
        self._members.discard(address)
        self._joined.discard(address)
        index = self._index(address)
        del self._hashes[index]
        del self._addresses[index]

    def _index(self, address: str) -> int:
        """Where ``address`` is, or goes, in the sorted arrays."""
        point = address_point(address, self._salt)
        hashes, addresses = self._hashes, self._addresses
        index = bisect.bisect_left(hashes, point)
        # Equal hashes (a 2**-64 chance per pair) are ordered by address.
        while index < len(hashes) and hashes[index] == point and addresses[index] < address:
            index += 1
        return index

    def _start(self) -> int:
        """The index of the first address at or after the client's position."""
        return math.ceil(self._point * len(self._addresses)) % len(self._addresses)

    def _distance(self, address: str, start: int) -> int:
        """How many steps after ``start`` ``address`` comes in ring order."""
        return (self._index(address) - start) % len(self._addresses)

    def plan(self) -> list[str]:
        """The ``min(N, S)`` addresses the client's position names, in ring order."""
        addresses = self._addresses
        total = len(addresses)
        if not total:
            return []
        start = self._start()
        end = start + min(self.size, total)
        if end <= total:
            return addresses[start:end]
        return addresses[start:] + addresses[: end - total]

    def subset(
        self, healthy: Callable[[str], bool] | None = None, size: int | None = None
    ) -> list[str]:
        """What the client holds now, in ring order: ``min(size, S)`` addresses (``size``
        defaults to the ring's), plus stand-ins for the unhealthy ones among them."""
        addresses = self._addresses
        total = len(addresses)
        target = min(self.size if size is None else size, total)
        joined, self._joined = self._joined, set()
        held = self._held & self._members
        if not target:
            self._held = set()
            return []
        start = self._start()
        planned = self.plan()[:target]
        plan = set(planned)
        # A joiner the plan names replaces the held address furthest from the plan.
        for address in sorted(joined & plan - held, key=lambda a: self._distance(a, start)):
            if len(held) >= target:
                extra = [a for a in held if a not in plan]
                if not extra:
                    break
                held.discard(max(extra, key=lambda a: self._distance(a, start)))
            held.add(address)
        if len(held) > target:
            held = set(sorted(held, key=lambda a: self._distance(a, start))[:target])
        index = start
        for _ in range(total):
            if len(held) >= target:
                break
            held.add(addresses[index])
            index = (index + 1) % total
        self._held = held
        # Mostly what is held is the plan: no search needed to put it in ring order.
        chosen = planned if held == plan else sorted(held, key=lambda a: self._distance(a, start))
        if healthy is None:
            return chosen
        # Stand-ins: the first healthy ones after the start that are not held. The search is
        # bounded: it runs on every health change, and a service mostly down must not cost a
        # walk over all of its addresses each time.
        missing = sum(1 for a in chosen if not healthy(a))
        index = start
        for _ in range(min(total, _STAND_IN_SEARCH * target + 64)):
            if not missing:
                break
            address = addresses[index]
            if address not in held and healthy(address):
                chosen.append(address)
                missing -= 1
            index = (index + 1) % total
        return chosen
