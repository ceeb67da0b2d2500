"""How fast a fleet of subsetting clients starting at once gets dense ranks from etcd.

Run it from the project root, in the project's virtual environment (it starts its own etcd on
free loopback ports and stops it afterwards; a few seconds)::

    python benchmarks/bench_ranks.py
    python benchmarks/bench_ranks.py --clients 1000

Each client is what ``resolve(..., subset_size=N)`` without an integer ``client_id`` runs: a
``RankClaim`` (lease, waiting key, rank key) on one shared etcd client. Measured, each
``--rounds`` times on a fresh service: all ``--clients`` claiming at once (the race the waiting
keys are there for), against the baseline of the same clients claiming one after the other (no
race at all): the time until every client holds a rank, each client's own claim time (median and
maximum), and whether the ranks are dense (``0 .. clients - 1``). Stdout gets a markdown table;
the ratio is racing over one after the other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import anyio
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs

import aiodiscovery
from aiodiscovery._naming.ranks import RankClaim
from aiodiscovery.testing import EtcdServer


async def claim_all(
    client: aiodiscovery.EtcdClient, service: str, clients: int, together: bool
) -> tuple[float, list[float], bool]:
    """Every client's claim: the whole time, each one's time, whether the ranks are dense."""
    claims = [RankClaim(client, service, f"host-{i}/1") for i in range(clients)]
    times: list[float] = []

    async def one(claim: RankClaim) -> None:
        began = time.perf_counter()
        with anyio.fail_after(60):
            await claim.claim()
        times.append(time.perf_counter() - began)

    began = time.perf_counter()
    if together:
        async with anyio.create_task_group() as tg:
            for claim in claims:
                tg.start_soon(one, claim)
    else:
        for claim in claims:
            await one(claim)
    elapsed = time.perf_counter() - began
    dense = sorted(c.rank for c in claims if c.rank is not None) == list(range(clients))
    with anyio.CancelScope(shield=True):
        for claim in claims:
            await claim._revoke()
    return elapsed, times, dense


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[float, list[float], bool]]] = {"racing": [], "one by one": []}
    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url)
        try:
            for round_ in range(args.rounds):
                for name, together in (("racing", True), ("one by one", False)):
                    print(f"round {round_ + 1}: {name}", file=sys.stderr)
                    service = f"bench/ranks/{round_}/{name.replace(' ', '-')}"
                    results[name].append(await claim_all(client, service, args.clients, together))
        finally:
            await client.close()

    def figures(name: str) -> tuple[float, float, float, bool]:
        runs = results[name]
        return (
            statistics.median(r[0] for r in runs),
            statistics.median(statistics.median(r[1]) for r in runs),
            statistics.median(max(r[1]) for r in runs),
            all(r[2] for r in runs),
        )

    racing, serial = figures("racing"), figures("one by one")
    print(f"{args.clients} clients claiming a rank on one etcd, median of {args.rounds} rounds")
    print()
    rows = [["measurement", "racing (all at once)", "one by one (baseline)", "ratio"]]
    labels = ["all ranked (s)", "one client's claim, median (s)", "one client's claim, max (s)"]
    for label, ours, theirs in zip(labels, racing[:3], serial[:3], strict=True):
        rows.append([label, f"{ours:.3f}", f"{theirs:.3f}", f"{ours / theirs:.2f}x"])
    rows.append(["ranks dense 0 .. clients - 1", str(racing[3]), str(serial[3]), "-"])
    print(markdown_table(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    anyio.run(main, parser.parse_args())
