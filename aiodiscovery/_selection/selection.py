"""Which of the dialable endpoints the pool connects to: subsetting and locality together.

Without ``subset_size`` or ``zone`` the pool holds every address the admission lets through.
With ``subset_size=N`` it holds this client's subset of them (:mod:`.subset`): exactly
``min(N, S)``, and while some of those are unhealthy (ejected, failing their health check, or
unreachable) the next healthy ones in the client's ring order stand in for them.
With ``zone=Z`` the addresses split into the zone's and the others; the pool holds the zone's
(its subset of them, with ``subset_size``) and, only while the zone is below its spill threshold
(:mod:`.locality`), also some of the others': all of them without ``subset_size``, with it as
many as make the healthy ones ``N`` again. So a subset is drawn within the zone first, and
spilling over tops it up from the other zones.

Where a client sits on the ring (its *placement*): an integer ``client_id`` is its rank; without
one, or with a string, the pool asks etcd for a rank (``subset_ranks``, on by default) and the
client sits at the hash of its id until it has one.

Every change costs the same whatever the number of addresses: the pool hands over the addresses
that changed, and gets back those whose being held may have changed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .._logsafe import safe
from .admission import Wanted
from .locality import DEFAULT_SPILL_THRESHOLD, endpoint_zone, should_spill
from .subset import Ring, client_point

#: How a client was placed on the ring, as :class:`SelectionStatistics` says it.
PLACED_BY_CLIENT_ID = "client_id"
PLACED_BY_RANK = "etcd rank"
PLACED_BY_HASH = "hash"

__all__ = ["Selection", "SelectionConfig", "SelectionStatistics", "default_client_id"]

logger = logging.getLogger("aiodiscovery.pool")


def default_client_id() -> str:
    """This process's client id when none is given: ``"<host name>/<process id>"``.

    Stable for the life of the process (every channel of the process to a service holds the same
    subset) and different between processes of one host.
    """
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True)
class SelectionConfig:
    """``resolve()``'s ``subset_size``, ``client_id``, ``zone``, ``spill_threshold`` and
    ``subset_ranks``."""

    subset_size: int | None = None
    client_id: int | str | None = None
    zone: str | None = None
    spill_threshold: float = DEFAULT_SPILL_THRESHOLD
    subset_ranks: bool = True

    def __post_init__(self) -> None:
        size = self.subset_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"subset_size must be a whole number >= 1 or None, got {size!r}")
        client_id = self.client_id
        if client_id is not None and (
            isinstance(client_id, bool) or not isinstance(client_id, int | str)
        ):
            raise TypeError(f"client_id must be an int or a str, got {self.client_id!r}")
        if self.zone is not None and (not isinstance(self.zone, str) or not self.zone):
            raise ValueError(f"zone must be a non-empty string or None, got {self.zone!r}")
        if not 0 <= self.spill_threshold <= 1:
            raise ValueError(f"spill_threshold must be in [0, 1], got {self.spill_threshold!r}")
        if not isinstance(self.subset_ranks, bool):
            raise TypeError(f"subset_ranks must be True or False, got {self.subset_ranks!r}")

    @property
    def active(self) -> bool:
        """Whether the pool holds anything less than every dialable address."""
        return self.subset_size is not None or self.zone is not None

    @property
    def wants_rank(self) -> bool:
        """Whether the pool should ask etcd for a rank: subsetting without an integer id."""
        return (
            self.subset_size is not None
            and self.subset_ranks
            and not isinstance(self.client_id, int)
        )


@dataclass(frozen=True, slots=True)
class SelectionStatistics:
    """Which endpoints the pool chose to connect to, and why.

    ``endpoints`` counts the distinct dialable addresses registered; ``subset`` lists those the
    pool chose to hold (None without ``subset_size`` or ``zone``: it holds every one), of which
    ``standing_in`` are there only while some of the others are unhealthy. ``client_id`` is the
    id in use, ``rank`` the client's rank (its integer ``client_id``, or the one etcd gave it;
    None while it has none) and ``placed_by`` how its place on the ring was chosen:
    ``"client_id"`` (an integer id), ``"etcd rank"``, or ``"hash"`` (of ``client_id``: ranks
    off, or etcd has not answered yet). With
    ``zone``: ``local`` counts the zone's addresses, ``local_healthy`` those of the zone's held
    ones that are healthy (READY and eligible, or not yet through their first connection
    attempt), ``spilling`` tells whether the other zones take calls too, ``spills`` how many
    times that began.
    """

    endpoints: int
    subset: tuple[str, ...] | None
    subset_size: int | None = None
    client_id: int | str | None = None
    zone: str | None = None
    local: int = 0
    local_healthy: int = 0
    spilling: bool = False
    spills: int = 0
    rank: int | None = None
    placed_by: str | None = None
    standing_in: int = 0


# Whether an address is healthy enough to count towards a subset's size.
Healthy = Callable[[str], bool]


def _always(address: str) -> bool:
    return True


class _Group:
    """The addresses of one zone (or of the whole service) and those of them chosen."""

    def __init__(self, size: int | None, point: float, salt: str) -> None:
        self._ring = None if size is None else Ring(size, point, salt)
        self._all: set[str] = set()

    def __len__(self) -> int:
        return len(self._all) if self._ring is None else len(self._ring)

    def reset(self, addresses: Iterable[str]) -> None:
        if self._ring is None:
            self._all = set(addresses)
        else:
            self._ring.reset(addresses)

    def add(self, address: str) -> None:
        if self._ring is None:
            self._all.add(address)
        else:
            self._ring.add(address)

    def discard(self, address: str) -> None:
        if self._ring is None:
            self._all.discard(address)
        else:
            self._ring.discard(address)

    def move(self, point: float) -> None:
        if self._ring is not None:
            self._ring.move(point)

    def chosen(self, healthy: Healthy, size: int | None = None) -> list[str]:
        if self._ring is None:
            return list(self._all)
        return self._ring.subset(healthy, size)


class Selection:
    """Tracks the dialable addresses and decides which of them the pool holds."""

    def __init__(self, target: str, config: SelectionConfig | None) -> None:
        self.target = target
        self.config = config = config or SelectionConfig()
        client_id = config.client_id
        if config.subset_size is not None and client_id is None:
            client_id = default_client_id()
        self.client_id = client_id
        self.rank: int | None = None
        self.placed_by: str | None = None
        point = 0.0
        if client_id is not None and config.subset_size is not None:
            point = client_point(client_id, target)
            if isinstance(client_id, int):
                self.rank, self.placed_by = client_id, PLACED_BY_CLIENT_ID
            else:
                self.placed_by = PLACED_BY_HASH
        self._local = _Group(config.subset_size, point, target)
        self._remote = _Group(config.subset_size, point, target)
        # With a zone: address -> whether it is in the zone (without one, all are local).
        self._placed: dict[str, bool] = {}
        self.chosen: set[str] = set()
        self.standing_in = 0
        self.spilling = False
        self.spills = 0
        self._local_healthy = 0
        self._healthy: Healthy = _always

    @property
    def active(self) -> bool:
        """Whether the pool holds anything less than every dialable address."""
        return self.config.active

    def set_rank(self, rank: int) -> set[str]:
        """Place the client by the ``rank`` etcd gave it; returns the addresses whose being
        chosen changed."""
        if rank == self.rank and self.placed_by == PLACED_BY_RANK:
            return set()
        self.rank, self.placed_by = rank, PLACED_BY_RANK
        point = client_point(rank, self.target)
        self._local.move(point)
        self._remote.move(point)
        return self._choose()

    def update(self, wanted: Mapping[str, Wanted], touched: set[str] | None) -> set[str] | None:
        """Follow the admitted addresses (``touched`` changed; None: any may have).

        Returns the addresses whose being chosen may have changed (None: any may have).
        """
        if not self.active:
            return touched
        zone = self.config.zone
        if touched is None:
            if zone is None:
                self._local.reset(wanted)
            else:
                self._placed = {a: _zone(w) == zone for a, w in wanted.items()}
                self._local.reset(a for a, local in self._placed.items() if local)
                self._remote.reset(a for a, local in self._placed.items() if not local)
            self._choose()
            return None
        for address in touched:
            want = wanted.get(address)
            if zone is None:
                if want is None:
                    self._local.discard(address)
                else:
                    self._local.add(address)
                continue
            was = self._placed.pop(address, None)
            if was is not None:
                (self._local if was else self._remote).discard(address)
            if want is not None:
                local = _zone(want) == zone
                self._placed[address] = local
                (self._local if local else self._remote).add(address)
        return self._choose() | touched

    def review(self, healthy: Healthy, serving: Healthy) -> set[str]:
        """Re-decide from the endpoints' health: stand-ins for the unhealthy members of the
        subset (``serving`` says which count), and spilling over (``healthy`` says which of the
        zone's do); returns the addresses whose being chosen changed."""
        if not self.active:
            return set()
        self._healthy = serving
        if self.config.zone is not None:
            self._review_zone(healthy)
        return self._choose()

    def _review_zone(self, healthy: Healthy) -> None:
        # Judged on the zone's subset itself: stand-ins come and go with the health they are
        # judged by, and would make the decision flap. While spilling, the zone's own
        # stand-ins are still taken first (see _choose).
        local = self._local.chosen(_always)
        total = len(local)
        self._local_healthy = sum(1 for address in local if healthy(address))
        spill = should_spill(self._local_healthy, total, self.config.spill_threshold)
        if spill == self.spilling:
            return
        self.spilling = spill
        zone = safe(self.config.zone)
        if spill:
            self.spills += 1
            logger.warning(
                "%s: zone %s has %d healthy of %d endpoints (spill threshold %g): "
                "calls spill over to other zones",
                self.target,
                zone,
                self._local_healthy,
                total,
                self.config.spill_threshold,
            )
        else:
            logger.warning(
                "%s: zone %s is healthy again (%d of %d endpoints): calls stay in the zone",
                self.target,
                zone,
                self._local_healthy,
                total,
            )

    def _choose(self) -> set[str]:
        """Recompute :attr:`chosen`; return what changed."""
        serving = self._healthy
        local = self._local.chosen(serving)
        chosen = set(local)
        size = self.config.subset_size
        # With nothing in the zone there is nothing to wait for: the others serve at once.
        if self.config.zone is None or self.spilling or not chosen:
            if size is None:
                chosen.update(self._remote.chosen(serving))
            else:
                # The other zones top the healthy ones up to the subset's size, no more.
                short = size - sum(1 for address in local if serving(address))
                if short > 0:
                    chosen.update(self._remote.chosen(serving, short))
        self.standing_in = max(0, len(chosen) - size) if size is not None else 0
        changed = chosen ^ self.chosen
        self.chosen = chosen
        return changed

    def statistics(self, endpoints: int) -> SelectionStatistics:
        """What :class:`SelectionStatistics` says, with ``endpoints`` dialable addresses."""
        config = self.config
        return SelectionStatistics(
            endpoints=endpoints,
            subset=tuple(sorted(self.chosen)) if self.active else None,
            subset_size=config.subset_size,
            client_id=self.client_id,
            zone=config.zone,
            local=len(self._local) if config.zone is not None else 0,
            local_healthy=self._local_healthy,
            spilling=self.spilling,
            spills=self.spills,
            rank=self.rank,
            placed_by=self.placed_by,
            standing_in=self.standing_in,
        )


def _zone(want: Wanted) -> str | None:
    return endpoint_zone(want.metadata)
