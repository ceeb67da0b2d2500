"""The argument parser: the global options, then one subcommand per :class:`Command`."""

from __future__ import annotations

import argparse

from ._add import ADD
from ._command import Command
from ._del import DEL
from ._demo._command import DEMO
from ._errors import PROG
from ._list import LIST
from ._settings import add_connection_options
from ._watch import WATCH
from ._xds import XDS_SERVER

__all__ = ["COMMANDS", "build_parser"]

COMMANDS: dict[str, Command] = {c.name: c for c in (LIST, WATCH, ADD, DEL, DEMO, XDS_SERVER)}

_EPILOG = """\
exit status: 0 success, 1 operational error (etcd unreachable, credentials refused, ...),
2 usage error (bad option, target, key or JSON), 130 after Ctrl-C and 143 after SIGTERM
(128 + the signal number, once the command has cleaned up), 141 when the reader of its output
went away (| head).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aiodiscovery`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and edit the etcd service registry that etcd's Go naming package "
        "(and aiodiscovery) use, or watch discovery at work with `demo`.",
        epilog=_EPILOG,
    )
    add_connection_options(parser, in_command=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description, epilog=_EPILOG
        )
        # Connection options may come before or after the command, as with etcdctl.
        add_connection_options(sub, in_command=True)
        command.configure(sub)
    return parser
