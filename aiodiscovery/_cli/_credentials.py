"""The etcd user and password: ``--user name[:password]`` and ``--password``, else a prompt."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from aiodiscovery import parse_user

from ._errors import fail

__all__ = ["Credentials", "add_credential_options", "credentials"]


@dataclass(frozen=True)
class Credentials:
    """A user name and password for etcd; the password stays out of ``repr``."""

    username: str
    password: str = field(repr=False)


def add_credential_options(
    group: argparse._ArgumentGroup, default: Callable[[object], object]
) -> None:
    """The options that name the etcd user and its password."""
    group.add_argument(
        "--user",
        metavar="NAME[:PASSWORD]",
        default=default(None),
        help="etcd user; without a password it is asked for when stdin is a terminal",
    )
    group.add_argument(
        "--password",
        default=default(None),
        help="password for --user (then --user holds only the name)",
    )


def credentials(args: argparse.Namespace, stdin: TextIO) -> Credentials | None:
    """The user and password the options name; ``None`` for no user."""
    if args.user is None:
        if args.password is not None:
            fail("--password needs --user")
        return None
    try:
        name, password = parse_user(args.user)
    except ValueError as exc:
        fail(f"--user: {exc}")
    if args.password is not None:
        if password is not None:
            fail("give the password either in --user NAME:PASSWORD or with --password, not both")
        password = args.password
    if password is None:
        if not stdin.isatty():
            fail(
                f"--user {name} has no password and stdin is not a terminal to ask for it; "
                "use --user NAME:PASSWORD or --password"
            )
        try:
            password = getpass.getpass(f"Password for etcd user {name}: ")
        except EOFError:
            fail("no password given")
    return Credentials(name, password)
