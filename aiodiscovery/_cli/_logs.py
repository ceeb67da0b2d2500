"""What a command says on stderr: the library's log lines and warnings, one line each, as
``aiodiscovery: <level>: <message>``, and its own errors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

from aiodiscovery import printable as safe

from ._errors import PROG

__all__ = ["LineFormatter", "logging_to_stderr", "report_error"]

logger = logging.getLogger("aiodiscovery")


class LineFormatter(logging.Formatter):
    """``aiodiscovery: <level>: <prefix><message>``, escaped line by line (a --debug traceback
    keeps its lines): whatever a log call passed raw, a key or an address from the registry,
    reaches the terminal escaped."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__("%(message)s")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = "\n".join(safe(line) for line in super().format(record).split("\n"))
        return f"{PROG}: {record.levelname.lower()}: {self.prefix}{text}"


class _RegistrationNews(logging.Filter):
    """For ``add --ttl``: warnings, plus the news that a lost registration is back or that the
    lease was revoked at exit (the Registrar logs those at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.getMessage().startswith(("re-registered ", "unregistered "))


@contextlib.contextmanager
def logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Log lines on stderr for one ``main()`` call; the logger is as before afterwards, so that
    ``main()`` can run again in one process without doubling every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    if args.debug:
        logger.setLevel(logging.DEBUG)
    elif args.command == "add" and args.ttl is not None:
        logger.setLevel(logging.INFO)
        handler.addFilter(_RegistrationNews())
    else:
        logger.setLevel(logging.WARNING)

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        # The library's warnings (a password over plaintext) in the command line's own format.
        print(f"{PROG}: warning: {safe(message)}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def report_error(message: str, debug: bool) -> None:
    """``message`` as one ``aiodiscovery: error:`` line; with ``debug`` its other lines follow."""
    lines = [safe(line) for line in str(message).strip().splitlines()] or ["unknown error"]
    text = lines[0]
    if len(lines) > 1 and not debug:
        text += " (--debug shows more)"
    print(f"{PROG}: error: {text}", file=sys.stderr)
    if debug and len(lines) > 1:
        print("\n".join(lines[1:]), file=sys.stderr)
    sys.stderr.flush()
