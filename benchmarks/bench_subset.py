"""How evenly subsetting spreads clients over servers, and how many connections churn moves.

The picker logic only, no network: it runs in a few seconds::

    python benchmarks/bench_subset.py
    python benchmarks/bench_subset.py --clients 300 --servers 1000 --subset 32 --churn 10

Stdout gets one markdown table: each algorithm's figure, the best baseline's, and the ratio.
Every algorithm gets the same servers (``--servers`` addresses) and clients with ids
``0 .. --clients - 1``:

a. aiodiscovery's subsetting (``resolve(..., subset_size=N, client_id=i)``): consistent
   subsetting, arcs of length N/S on a hash ring, clients placed by the van der Corput sequence;
b. baseline 1, Google's SRE book deterministic subsetting: clients in rounds of
   ``S // N``, each round shuffles the sorted server list with the round number as the seed and
   gives each client of the round the next N servers;
c. baseline 2, rendezvous hashing (gRPC's A68 ``random_subsetting``, salted with the client id
   instead of a random salt): the N servers with the lowest hash of (client, server).

Measured: connections per server (max, min, max/min, standard deviation; with C x N / S not a
whole number, max/min cannot go below ceil/floor of it); subset sizes; the share of each
client's calls a server gets, as max/min over servers (each client spreading its calls evenly
over its subset); then ``--churn`` servers leave (the same ones for every algorithm) and, apart,
``--churn`` new servers join: the connections dropped to servers that stayed (ideal: 0) and the
connections made in all, against those the leavers had.
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

from aiodiscovery._selection.subset import Ring, address_point, client_point

SALT = "bench/subset"

Picker = Callable[[Sequence[str], int, int], set[str]]


def ours(servers: Sequence[str], client: int, size: int) -> set[str]:
    ring = Ring(size, client_point(client, SALT), SALT)
    ring.reset(servers)
    return set(ring.subset())


def sre_book(servers: Sequence[str], client: int, size: int) -> set[str]:
    ordered = sorted(servers)
    per_round = max(1, len(ordered) // size)
    random.Random(client // per_round).shuffle(ordered)
    start = (client % per_round) * size
    return set(ordered[start : start + size])


def rendezvous(servers: Sequence[str], client: int, size: int) -> set[str]:
    salt = f"{SALT}/{client}"
    return set(sorted(servers, key=lambda s: address_point(s, salt))[:size])


def run(pick: Picker, args: argparse.Namespace) -> dict[str, float]:
    servers = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:50051" for i in range(args.servers)]
    clients = range(args.clients)
    before = [pick(servers, c, args.subset) for c in clients]
    per_server = Counter(s for subset in before for s in subset)
    counts = [per_server.get(s, 0) for s in servers]
    share = Counter[str]()
    for subset in before:
        for s in subset:
            share[s] += 1 / len(subset)
    shares = [share.get(s, 0.0) for s in servers]

    leavers = set(random.Random(args.seed).sample(servers, args.churn))
    after_leave = [pick([s for s in servers if s not in leavers], c, args.subset) for c in clients]
    joiners = [f"10.255.255.{i}:50051" for i in range(args.churn)]
    after_join = [pick([*servers, *joiners], c, args.subset) for c in clients]

    def dropped(after: list[set[str]], gone: set[str]) -> int:
        return sum(len(b - a - gone) for b, a in zip(before, after, strict=True))

    def made(after: list[set[str]]) -> int:
        return sum(len(a - b) for b, a in zip(before, after, strict=True))

    sizes = [len(s) for s in before]
    return {
        "max": max(counts),
        "min": min(counts),
        "max/min": max(counts) / max(min(counts), 1),
        "sd": statistics.pstdev(counts),
        "size min": min(sizes),
        "size max": max(sizes),
        "share max/min": max(shares) / min(shares) if min(shares) else math.inf,
        "leave: to leavers": sum(len(b & leavers) for b in before),
        "leave: dropped to stayers": dropped(after_leave, leavers),
        "leave: made": made(after_leave),
        "join: dropped": dropped(after_join, set()),
        "join: made": made(after_join),
    }


def fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--subset", type=int, default=32)
    parser.add_argument("--churn", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"computing {args.clients} subsets x 3 algorithms x 3 server sets", file=sys.stderr)
    results = {
        "aiodiscovery": run(ours, args),
        "SRE book": run(sre_book, args),
        "rendezvous (A68)": run(rendezvous, args),
    }
    mean = args.clients * args.subset / args.servers
    print(
        f"{args.clients} clients x {args.servers} servers, subset {args.subset}: "
        f"{mean:.2f} connections per server on average, so max/min >= "
        f"{math.ceil(mean)}/{math.floor(mean)} = {math.ceil(mean) / math.floor(mean):.3f} "
        f"at best; {args.churn} servers leave, or join"
    )
    print()
    header = ["measurement", *results, "ratio to SRE book", "ratio to rendezvous"]
    rows = [header]
    for metric in results["aiodiscovery"]:
        row = [metric, *(fmt(r[metric]) for r in results.values())]
        ours_value = results["aiodiscovery"][metric]
        for baseline in ("SRE book", "rendezvous (A68)"):
            theirs = results[baseline][metric]
            row.append(f"{ours_value / theirs:.2f}x" if theirs else "-")
        rows.append(row)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
