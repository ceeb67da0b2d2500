"""A gRPC client in a process of its own: calls ``xds:///SERVICE`` until DISTINCT servers have
answered (at most COUNT calls) and prints who answered.

Its xDS bootstrap comes from its environment (``GRPC_XDS_BOOTSTRAP_CONFIG``), as any gRPC
service's would; the output is one JSON object: server name -> calls.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

import grpc.aio


async def main(service: str, distinct: int, count: int) -> None:
    async with grpc.aio.insecure_channel(f"xds:///{service}") as channel:
        call = channel.unary_unary("/test.Echo/Unary")
        seen: Counter[str] = Counter()
        for _ in range(count):
            reply = await call(b"x", wait_for_ready=True, timeout=20)
            seen[reply.decode().partition(":")[0]] += 1
            if len(seen) >= distinct:
                break
    print(json.dumps(dict(seen)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
