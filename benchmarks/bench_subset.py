"""How evenly subsetting spreads clients over servers, and how many connections churn moves.

The picker logic only, no network: it runs in a few seconds::

    python benchmarks/bench_subset.py
    python benchmarks/bench_subset.py --clients 40 --servers 20 --subset 5 --churn 2

Stdout gets one markdown table: each algorithm's figures and the ratios of ours to two
baselines measured in the same run. Every algorithm gets the same servers (``--servers``
addresses) and clients ``0 .. --clients - 1``:

a. aiodiscovery with ranks (``resolve(..., subset_size=N)``, which claims a dense rank from etcd,
   or an integer ``client_id``): servers evenly spaced in hash order, clients placed by the van
   der Corput sequence of their rank, each client keeping what it holds across changes
   (stateful: one :class:`Ring` per client, fed each change);
b. aiodiscovery placed by hash (``subset_ranks=False``, or etcd unreachable): the same with each
   client at the hash of its id (``"host-i/1"``);
c. Google's SRE book deterministic subsetting: clients in rounds of ``S // N``, each round
   shuffles the sorted server list with the round number as the seed and gives each client of
   the round the next N servers;
d. rendezvous hashing (gRPC's A68 ``random_subsetting``, salted with the client id instead of a
   random salt): the N servers with the lowest hash of (client, server);
e. Ringsteady (Google, ACM Queue 2022): servers at the van der Corput point of their task index
   (the order they registered in; a leaver's index stays free, a joiner takes the next new one),
   clients at that of theirs, each taking the N servers from its point on.

Measured: subset sizes; connections per server (max/min, standard deviation; with C x N / S not
a whole number, max/min cannot go below ceil/floor of it); the share of calls per server
(max/min, each client spreading its calls evenly over its subset); then, each from the first
state: ``--churn`` servers leave (the same ones for every algorithm): connections that went to
the leavers, and connections moved in all (dropped plus made; ideal: the leavers' connections,
each replaced once), and of those dropped to servers that stayed (ideal: 0); ``--churn`` new
servers join: connections moved in all (ideal: what the joiners take, each one let go once);
``--churn`` clients leave (ranks freed), and ``--churn`` join (the next ranks): connections of
the other clients moved (ideal: 0), and connections per server max/min after.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence

from _table import markdown_table  # benchmarks/ is on sys.path when a script runs

from aiodiscovery._selection.subset import Ring, address_point, client_point, van_der_corput

SALT = "bench/subset"

Subsets = dict[int, set[str]]


class Fleet:
    """One algorithm's clients: :meth:`subsets` for a server list, after whatever came before."""

    def __init__(self, size: int) -> None:
        self.size = size

    def subsets(self, servers: Sequence[str], clients: Sequence[int]) -> Subsets:
        return {client: self.pick(servers, client) for client in clients}

    def pick(self, servers: Sequence[str], client: int) -> set[str]:
        raise NotImplementedError


class Ours(Fleet):
    """aiodiscovery's rings, one per client, kept from one change to the next."""

    def __init__(self, size: int, place: Callable[[int], int | str]) -> None:
        super().__init__(size)
        self.place = place
        self.rings: dict[int, Ring] = {}

    def pick(self, servers: Sequence[str], client: int) -> set[str]:
        ring = self.rings.get(client)
        if ring is None:
            ring = self.rings[client] = Ring(
                self.size, client_point(self.place(client), SALT), SALT
            )
        ring.reset(servers)
        return set(ring.subset())


class SreBook(Fleet):
    def pick(self, servers: Sequence[str], client: int) -> set[str]:
        ordered = sorted(servers)
        per_round = max(1, len(ordered) // self.size)
        random.Random(client // per_round).shuffle(ordered)
        start = (client % per_round) * self.size
        return set(ordered[start : start + self.size])


class Rendezvous(Fleet):
    def pick(self, servers: Sequence[str], client: int) -> set[str]:
        salt = f"{SALT}/{client}"
        return set(sorted(servers, key=lambda s: address_point(s, salt))[: self.size])


class Ringsteady(Fleet):
    """Task indices in registration order: the first server seen is 0, a joiner the next."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.index: dict[str, int] = {}

    def subsets(self, servers: Sequence[str], clients: Sequence[int]) -> Subsets:
        for server in servers:
            self.index.setdefault(server, len(self.index))
        ring = sorted((van_der_corput(self.index[s]), s) for s in servers)
        points = [point for point, _ in ring]
        result: Subsets = {}
        for client in clients:
            start = _bisect(points, van_der_corput(client))
            take = min(self.size, len(ring))
            result[client] = {ring[(start + i) % len(ring)][1] for i in range(take)}
        return result


def _bisect(points: list[float], point: float) -> int:
    low, high = 0, len(points)
    while low < high:
        middle = (low + high) // 2
        if points[middle] < point:
            low = middle + 1
        else:
            high = middle
    return low % len(points)


def spread(subsets: Subsets, servers: Sequence[str]) -> tuple[list[int], list[float]]:
    """Connections and call shares per server."""
    per_server = Counter(s for subset in subsets.values() for s in subset)
    share = Counter[str]()
    for subset in subsets.values():
        for s in subset:
            share[s] += 1 / len(subset)
    return [per_server.get(s, 0) for s in servers], [share.get(s, 0.0) for s in servers]


def ratio(values: Sequence[float]) -> float:
    return max(values) / min(values) if min(values) else math.inf


def moved(before: Subsets, after: Subsets, clients: Sequence[int]) -> int:
    return sum(len(before[c] ^ after[c]) for c in clients)


def run(make: Callable[[], Fleet], args: argparse.Namespace) -> dict[str, float | str]:
    servers = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:50051" for i in range(args.servers)]
    clients = list(range(args.clients))
    rng = random.Random(args.seed)
    leavers = set(rng.sample(servers, args.churn))
    stayers = [s for s in servers if s not in leavers]
    joiners = [f"10.255.255.{i}:50051" for i in range(args.churn)]
    gone = set(rng.sample(clients, args.churn))
    kept = [c for c in clients if c not in gone]
    new = list(range(args.clients, args.clients + args.churn))

    fleet = make()
    before = fleet.subsets(servers, clients)
    counts, shares = spread(before, servers)
    sizes = [len(s) for s in before.values()]
    after_leave = fleet.subsets(stayers, clients)

    fleet = make()
    fleet.subsets(servers, clients)
    after_join = fleet.subsets([*servers, *joiners], clients)

    fleet = make()
    fleet.subsets(servers, clients)
    without = fleet.subsets(servers, kept)

    fleet = make()
    fleet.subsets(servers, clients)
    with_more = fleet.subsets(servers, [*clients, *new])

    # Every state measured: the first, and after each change.
    every = [before, after_leave, after_join, without, with_more]
    all_sizes = [len(s) for state in every for s in state.values()]
    return {
        "subset size min - max": f"{min(sizes)} - {max(sizes)}",
        "subset size min - max, every case": f"{min(all_sizes)} - {max(all_sizes)}",
        "connections/server max/min": ratio(counts),
        "connections/server sd": statistics.pstdev(counts),
        "call share/server max/min": ratio(shares),
        "servers leave: connections to leavers": sum(len(b & leavers) for b in before.values()),
        "servers leave: connections moved": moved(before, after_leave, clients),
        "servers leave: dropped to stayers": sum(
            len(before[c] - after_leave[c] - leavers) for c in clients
        ),
        "servers join: connections moved": moved(before, after_join, clients),
        "clients leave: others' connections moved": moved(before, without, kept),
        "clients leave: connections/server max/min after": ratio(spread(without, servers)[0]),
        "clients join: others' connections moved": moved(before, with_more, clients),
        "clients join: connections/server max/min after": ratio(spread(with_more, servers)[0]),
    }


def fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if math.isinf(value):
        return "inf"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--subset", type=int, default=32)
    parser.add_argument("--churn", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    size = args.subset
    algorithms: dict[str, Callable[[], Fleet]] = {
        "ours, ranks": lambda: Ours(size, lambda c: c),
        "ours, hash": lambda: Ours(size, lambda c: f"host-{c}/1"),
        "SRE book": lambda: SreBook(size),
        "rendezvous (A68)": lambda: Rendezvous(size),
        "Ringsteady": lambda: Ringsteady(size),
    }
    print(f"computing {args.clients} subsets x {len(algorithms)} algorithms", file=sys.stderr)
    results = {name: run(make, args) for name, make in algorithms.items()}
    mean = args.clients * size / args.servers
    best = math.ceil(mean) / max(1, math.floor(mean))
    print(
        f"{args.clients} clients x {args.servers} servers, subset {size}: {mean:.2f} "
        f"connections per server on average, so max/min >= {best:.3f} at best; "
        f"{args.churn} servers leave, or join; {args.churn} clients leave, or join"
    )
    print()
    baselines = ("SRE book", "Ringsteady")
    header = ["measurement", *results, *(f"ours / {b}" for b in baselines)]
    rows = [header]
    for metric in results["ours, ranks"]:
        row = [metric, *(fmt(r[metric]) for r in results.values())]
        ours = results["ours, ranks"][metric]
        for baseline in baselines:
            theirs = results[baseline][metric]
            if isinstance(ours, str) or isinstance(theirs, str) or not theirs:
                row.append("-")
            else:
                row.append(f"{ours / theirs:.2f}x" if not math.isinf(theirs) else "-")
        rows.append(row)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
