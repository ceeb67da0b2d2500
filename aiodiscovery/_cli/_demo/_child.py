"""A demo server process: one greeter that registers itself and obeys the demo (see
:mod:`._protocol`). Run as ``python -m aiodiscovery._cli._demo._child``."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import sys
import warnings
from typing import Any
from urllib.parse import urlencode

import grpc
import grpc.aio

import aiodiscovery

from .._logs import LineFormatter
from ._protocol import CHILD_EXIT_TIMEOUT, SERVICE

__all__ = ["serve_main"]


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _tell(*words: str) -> None:
    print(*words, flush=True)


def _log_warnings(name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(f"demo server {name}: "))
    logger = logging.getLogger("aiodiscovery")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


async def _serve(reader: asyncio.StreamReader, config: dict[str, Any]) -> None:
    name: str = config["name"]
    _log_warnings(name)

    async def say_hello(request: bytes, context: Any) -> bytes:
        # A little work, so that calls are in flight when the server leaves or dies.
        await asyncio.sleep(random.uniform(0.005, 0.02))
        return f"hello {request.decode(errors='replace')} from {name}".encode()

    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
            ),
        )
    )
    await server.start()
    address = f"127.0.0.1:{port}"
    with warnings.catch_warnings():
        # The command that started us has said it already (a password over plaintext).
        warnings.simplefilter("ignore", UserWarning)
        client = await aiodiscovery.connect(config["urls"], **config["connect"])
    try:
        # Metadata as a string (server=s1), never an object: Go clients in the same registry
        # would crash on an object (etcd-io/etcd#19700).
        endpoint = aiodiscovery.Endpoint(address, urlencode([("server", name)]))
        registrar = aiodiscovery.Registrar(client, config["service"], endpoint, ttl=config["ttl"])
        async with registrar:
            _tell("READY", address, registrar.key)
            command = await reader.readline()
        # Leaving the block revoked the lease: the key is gone, the server still serves.
        _tell("DEREGISTERED")
        if command:
            await reader.readline()
        await server.stop(grace=CHILD_EXIT_TIMEOUT / 2)
        _tell("STOPPED")
    finally:
        await client.close()
        await server.stop(None)


async def _child_main() -> None:
    reader = await _stdin_lines()
    line = await reader.readline()
    if not line:
        return
    await _serve(reader, json.loads(line))


def serve_main() -> None:
    """Entry point of a demo server process."""
    # A Ctrl-C in the terminal is the demo's to handle: it stops us through stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_child_main())
    except Exception as exc:
        # Told to the demo, which names this server in its own one-line error; stderr only if
        # the demo is gone.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            _tell("ERROR", message)
        except OSError:
            print(f"aiodiscovery demo server: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    serve_main()
