"""``main()``: parse, resolve the settings, run one command until it ends or a signal stops it,
and turn the outcome into an exit status.

Exit codes: 0 success, 1 operational error (etcd unreachable, refused credentials, ...), 2 usage
error (bad option, target, key or JSON), and 128 + the signal number (130 for Ctrl-C, 143 for
SIGTERM) when a signal stopped the command, after it cleaned up; a shell reports ``etcdctl``
killed by the same signal with the same number. Output into a closed pipe (``| head``) ends the
command quietly with 141, as SIGPIPE would.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from aiodiscovery import EtcdError

from ._errors import EXIT_ERROR, EXIT_USAGE, CommandError, UsageError
from ._logs import logging_to_stderr, report_error
from ._parser import COMMANDS, build_parser
from ._settings import ConnectSettings, settings_from_args

__all__ = ["main"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_OPERATIONAL = CommandError | EtcdError | RuntimeError | TimeoutError | OSError

logger = logging.getLogger("aiodiscovery")


@dataclass
class _Outcome:
    code: int | None = None
    error: Exception | None = None
    signum: int | None = None


async def _run(
    func: Callable[[argparse.Namespace, ConnectSettings], Awaitable[int]],
    args: argparse.Namespace,
    settings: ConnectSettings,
) -> _Outcome:
    """Run one command; SIGINT or SIGTERM cancels it, and its cleanup runs before we return."""
    outcome = _Outcome()
    work = anyio.CancelScope()

    async def on_signals() -> None:
        # The receiver stays installed until the command has cleaned up: a second Ctrl-C does
        # not cut the cleanup short (it is bounded in time anyway).
        with anyio.open_signal_receiver(*_SIGNALS) as signals:
            async for signum in signals:
                if outcome.signum is None:
                    outcome.signum = int(signum)
                    work.cancel()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(on_signals)
        with work:
            try:
                outcome.code = await func(args, settings)
            except Exception as exc:
                outcome.error = exc
        task_group.cancel_scope.cancel()
    return outcome


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors inside ``error``: task groups wrap what their tasks raise in groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for member in error.exceptions for leaf in _leaves(member)]
    return [error]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with usage on a bad command line
    with logging_to_stderr(args):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    debug = bool(args.debug)
    command = COMMANDS[args.command]
    try:
        command.check(args)
        environ = os.environ if command.reads_environment(args) else {}
        settings = settings_from_args(args, environ, sys.stdin)
        outcome = anyio.run(_run, command.run, args, settings)
    except UsageError as exc:
        report_error(str(exc), debug)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C at the password prompt, or before the signal receiver was in place.
        return 128 + signal.SIGINT
    if outcome.signum is not None:
        return 128 + outcome.signum
    if outcome.error is None:
        assert outcome.code is not None
        return outcome.code
    errors = _leaves(outcome.error)
    if any(isinstance(error, BrokenPipeError) for error in errors):
        # `aiodiscovery watch svc | head -3`: the reader is gone; stop quietly, as cat does. (Other
        # errors beside it are tasks that saw the same ending.) No flush at exit may fail either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    if not all(isinstance(error, UsageError | _OPERATIONAL) for error in errors):
        raise outcome.error  # a bug: show the whole traceback
    # Several errors are several tasks failing alike (three servers that cannot register): the
    # first one tells the story.
    error = errors[0]
    if debug:
        logger.debug("failure", exc_info=outcome.error)
    report_error(str(error), debug)
    return EXIT_USAGE if isinstance(error, UsageError) else EXIT_ERROR
