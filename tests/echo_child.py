"""An echo server in a process of its own, for tests that SIGKILL it.

Run as ``python -m tests.echo_child --name s0`` from the project root.

Prints ``PORT <n>`` once serving on 127.0.0.1 (``--port 0``: a free one). ``/test.Echo/Unary``
answers ``<name>:<request>`` after ``--delay`` seconds, so that calls are in flight when it dies.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
import grpc.aio

from .servers import SERVICE


async def serve(name: str, port: int, delay: float) -> None:
    async def unary(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(delay)
        return name.encode() + b":" + request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.005)
    args = parser.parse_args()
    asyncio.run(serve(args.name, args.port, args.delay))


if __name__ == "__main__":
    main()
