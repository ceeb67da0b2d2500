"""What every child process of the soak (server, client, observer) shares.

A child tells the soak what happens as JSON lines on stdout, each stamped with
``time.monotonic()`` (CLOCK_MONOTONIC is one clock for every process of the machine, so the soak
can line up events from all its children). It stops when the soak closes its stdin (also when the
soak dies: the pipe then reaches end of file) or on SIGTERM/SIGINT. Logs go to stderr, which the
soak saves to a file and scans for tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

# With ``soak.py --auth`` the soak hands the etcd user and password to its children here, in
# their environment: never on a command line, which ``ps`` shows to every local user.
USER_ENV, PASSWORD_ENV = "SOAK_ETCD_USER", "SOAK_ETCD_PASSWORD"


def etcd_credentials() -> dict[str, str]:
    """``connect()`` keyword arguments for the soak's etcd user, if authentication is on."""
    user = os.environ.get(USER_ENV)
    if not user:
        return {}
    return {"username": user, "password": os.environ.get(PASSWORD_ENV, "")}


def emit(event: str, **fields: Any) -> None:
    """Tell the soak about ``event``: one JSON line on stdout, stamped with the monotonic clock."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Log to stderr with the monotonic clock, to compare with the events' timestamps."""

    class _Monotonic(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.mono = f"{time.monotonic():.3f}"
            return True

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Monotonic())
    handler.setFormatter(logging.Formatter("%(mono)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def stop_on_eof_or_signal(stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin reaches end of file or on SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def read_until_eof() -> None:
        # Raw reads on the file descriptor in a daemon thread: the soak never writes, so this
        # ends only at EOF; and unlike sys.stdin's buffered reader it holds no lock that the
        # interpreter would need at exit.
        while os.read(0, 4096):
            pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_until_eof, name="stdin-eof", daemon=True).start()


def run_child(
    parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Awaitable[None]]
) -> None:
    """Parse the child's arguments (plus ``--run-id``, which marks every process of one soak for
    its leak check), log to stderr and run ``main`` on asyncio."""
    parser.add_argument("--run-id", help="marks the soak's processes (for the leak check)")
    args = parser.parse_args()
    log_to_stderr()
    # SOAK_DEBUG_LOGGERS=aiodiscovery.registrar,aiodiscovery.etcd: those at DEBUG, to follow a
    # fault through the library's retries (they log their attempts at DEBUG only).
    for name in filter(None, os.environ.get("SOAK_DEBUG_LOGGERS", "").split(",")):
        logging.getLogger(name).setLevel(logging.DEBUG)
    anyio.run(main, args, backend="asyncio")
