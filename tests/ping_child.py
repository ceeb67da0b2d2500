"""A client of a whole cluster in a process of its own, so that a test can read grpc core's stderr.

Run as ``python -m tests.ping_child --urls URL,URL,URL --seconds 27`` from the project root.

It connects to every member, keeps a Registrar and a watch of its service open, puts a burst of
endpoints and waits until the watch has seen them all (a busy spell on the member in use), then
stays open and idle until ``--seconds`` after connecting: the other members' channels are
connections without a stream the whole time. It ends by printing each member channel's
connectivity (``STATE <url> <state>``) and ``DONE``.
"""

from __future__ import annotations

import argparse
import time

import anyio

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, Registrar, Watcher

SERVICE = "ping/svc"
BURST = 200


async def run(urls: str, seconds: float) -> None:
    started = time.monotonic()
    client = await aiodiscovery.connect(urls)
    try:
        em = EndpointManager(client, SERVICE)
        async with (
            Registrar(client, SERVICE, Endpoint("127.0.0.1:1"), ttl=2),
            Watcher(client, SERVICE) as watcher,
        ):
            for i in range(BURST):
                await em.add_endpoint(f"{SERVICE}/burst/{i % 10}", Endpoint(f"127.0.0.1:{i + 2}"))
            last = f"127.0.0.1:{BURST + 1}"
            with anyio.fail_after(30):
                async for snapshot in watcher.snapshots():
                    if last in {e.addr for e in snapshot.values()}:
                        break
            # The idle spell is the scenario itself: pings (or their absence) over real time.
            await anyio.sleep(max(0.0, seconds - (time.monotonic() - started)))
        for member in client.members.members:
            print(f"STATE {member.url} {member.state().name}", flush=True)
    finally:
        await client.close()
    print("DONE", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    anyio.run(run, args.urls, args.seconds)


if __name__ == "__main__":
    main()
