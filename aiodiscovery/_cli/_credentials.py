"""The etcd user and password: from options, ``ETCDCTL_USER``/``ETCDCTL_PASSWORD``, a file, a
pipe or a prompt, without ever needing the command line, where ``ps`` shows them to everyone.

The user is ``--user`` (``name`` or ``name:password``), else ``$ETCDCTL_USER`` (the same forms,
as etcdctl reads it). The password comes from exactly one of the command line's sources
(``--password-file``, ``--password-stdin``, or, with a warning, ``--user name:password`` or
``--password``); else from ``$ETCDCTL_USER`` when that names the user and holds a password; else
from ``$ETCDCTL_PASSWORD``; else it is asked for on a terminal. No password is ever repeated in a
message.
"""

from __future__ import annotations

import argparse
import getpass
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from aiodiscovery import parse_user

from ._errors import fail

__all__ = ["ENV_PASSWORD", "ENV_USER", "Credentials", "add_credential_options", "credentials"]

ENV_USER = "ETCDCTL_USER"
ENV_PASSWORD = "ETCDCTL_PASSWORD"

logger = logging.getLogger("aiodiscovery.cli")

_ARGV_WARNING = (
    "a password on the command line is visible to other users of this machine (ps, shell "
    f"history); prefer ${ENV_PASSWORD}, --password-file or --password-stdin"
)


@dataclass(frozen=True)
class Credentials:
    """A user name and password for etcd; the password stays out of ``repr``."""

    username: str
    password: str = field(repr=False)


def add_credential_options(
    group: argparse._ArgumentGroup, default: Callable[[object], object]
) -> None:
    """The options that name the etcd user and say where the password comes from."""
    group.add_argument(
        "--user",
        metavar="NAME[:PASSWORD]",
        default=default(None),
        help=f"etcd user (default: ${ENV_USER}); the password from --password-file, "
        f"--password-stdin or ${ENV_PASSWORD}, else asked for on a terminal",
    )
    group.add_argument(
        "--password-file",
        metavar="FILE",
        default=default(None),
        help="read the password from FILE (one trailing line break is dropped)",
    )
    group.add_argument(
        "--password-stdin",
        action="store_true",
        default=default(False),
        help="read the password from standard input, as `docker login --password-stdin` does",
    )
    group.add_argument(
        "--password",
        default=default(None),
        help=f"the password itself: visible in ps, so prefer ${ENV_PASSWORD} or the options above",
    )


def credentials(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: TextIO
) -> Credentials | None:
    """The user and password the options and the environment name; ``None`` for no user.

    Raises :class:`UsageError` for contradictions (two passwords), unreadable sources and a
    missing password that cannot be asked for.
    """
    given = _command_line_sources(args, stdin)
    if len(given) > 1:
        fail(f"give the password once, not with {' and '.join(name for name, _ in given)}")
    name, _ = _split_user("--user", args.user)
    env_inline: str | None = None
    if name is None:
        name, env_inline = _split_user(f"${ENV_USER}", environ.get(ENV_USER) or None)
    if name is None:
        if given:
            fail(f"{given[0][0]} needs --user (or ${ENV_USER})")
        return None
    env_password = environ.get(ENV_PASSWORD) or None
    if given:
        return Credentials(name, given[0][1]())
    if env_inline is not None:
        if env_password is not None:
            fail(f"${ENV_USER} holds a password and ${ENV_PASSWORD} another: set only one")
        return Credentials(name, env_inline)
    if env_password is not None:
        return Credentials(name, env_password)
    return Credentials(name, _ask(name, stdin))


def _split_user(where: str, value: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    try:
        return parse_user(value)
    except ValueError as exc:
        fail(f"{where}: {exc}")


def _command_line_sources(
    args: argparse.Namespace, stdin: TextIO
) -> list[tuple[str, Callable[[], str]]]:
    """The password sources given as options, each with how to read it."""
    sources: list[tuple[str, Callable[[], str]]] = []
    if args.user is not None:
        _, inline = _split_user("--user", args.user)
        if inline is not None:
            sources.append(("--user NAME:PASSWORD", lambda: _from_argv(inline)))
    if args.password is not None:
        password: str = args.password
        sources.append(("--password", lambda: _from_argv(password)))
    if args.password_file is not None:
        path: str = args.password_file
        sources.append(("--password-file", lambda: _from_file(path)))
    if args.password_stdin:
        sources.append(("--password-stdin", lambda: _from_stdin(stdin)))
    return sources


def _from_argv(password: str) -> str:
    logger.warning(_ARGV_WARNING)
    return password


def _one_line(text: str, where: str) -> str:
    """``text`` without the one line break that ends a file or ``echo`` output."""
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        fail(f"{where}: the password is empty")
    return text


def _from_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError:
        fail(f"--password-file {path}: not UTF-8 text")
    except OSError as exc:
        fail(f"--password-file {path}: {exc.strerror or type(exc).__name__}")
    return _one_line(text, f"--password-file {path}")


def _from_stdin(stdin: TextIO) -> str:
    if stdin.isatty():
        fail(
            "--password-stdin reads a pipe or a file; on a terminal, leave it out and you will "
            "be asked"
        )
    try:
        text = stdin.read()
    except UnicodeDecodeError:
        fail("--password-stdin: not UTF-8 text")
    return _one_line(text, "--password-stdin")


def _ask(name: str, stdin: TextIO) -> str:
    if not stdin.isatty():
        fail(
            f"no password for etcd user {name} and stdin is not a terminal to ask for it; use "
            f"${ENV_PASSWORD}, --password-file or --password-stdin"
        )
    try:
        password = getpass.getpass(f"Password for etcd user {name}: ")
    except EOFError:
        fail("no password given")
    return password
