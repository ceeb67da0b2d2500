"""A grpc.aio client that finds the greeter servers in etcd and spreads its calls over them.

    python examples/greeter_client.py --endpoints http://127.0.0.1:2379 --count 10

``aiodiscovery.resolve`` returns a ``grpc.aio.Channel`` that follows the service's endpoints in
etcd and balances each call (round robin by default) over the live ones; use it like any channel,
with generated stubs or, as here, a bare method (``/demo.Greeter/SayHello``, bytes in and out).
Exits 0 when every call succeeded, 1 when one failed; an unreachable etcd or an unknown
``--policy`` is reported in one line and exit status 1 as well.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter

import grpc
import grpc.aio

import aiodiscovery

METHOD = "/demo.Greeter/SayHello"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--endpoints",
        default=os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
        help="etcd URLs, comma-separated (default: $ETCD_ENDPOINTS or http://127.0.0.1:2379)",
    )
    parser.add_argument("--service", default="demo/greeter", help="service name to resolve")
    parser.add_argument("--count", type=int, default=10, help="number of calls (default: 10)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between calls")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="per call: how long to wait for a server (default: 10)",
    )
    parser.add_argument("--policy", default="round_robin", help="round_robin, p2c, pick_first...")
    return parser.parse_args()


async def run(args: argparse.Namespace) -> int:
    client = await aiodiscovery.connect(args.endpoints)
    try:
        channel = await aiodiscovery.resolve(client, f"etcd:///{args.service}", policy=args.policy)
        async with channel:
            say_hello = channel.unary_unary(METHOD)
            servers: Counter[str] = Counter()
            failures = 0
            for i in range(args.count):
                try:
                    # wait_for_ready: with no server registered yet, wait for one (until timeout).
                    reply = await say_hello(
                        f"call {i}".encode(), timeout=args.timeout, wait_for_ready=True
                    )
                except grpc.aio.AioRpcError as exc:
                    failures += 1
                    print(f"call {i} failed: {exc.code().name} {exc.details()}", flush=True)
                else:
                    text = reply.decode()
                    servers[text.rsplit(" ", 1)[-1]] += 1
                    print(text, flush=True)
                if i + 1 < args.count:
                    await asyncio.sleep(args.interval)
            spread = ", ".join(f"{name}: {n}" for name, n in sorted(servers.items()))
            print(
                f"{args.count - failures} of {args.count} calls succeeded"
                + (spread and f" ({spread})")
            )
            return 0 if failures == 0 else 1
    finally:
        await client.close()


def main() -> None:
    args = parse_args()
    try:
        code = asyncio.run(run(args))
    except (aiodiscovery.AiodiscoveryError, OSError, ValueError) as exc:
        # etcd unreachable, or resolve() refusing the --policy: one line, not a traceback.
        print(f"greeter_client: error: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
