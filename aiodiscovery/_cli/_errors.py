"""How a command fails: a usage error (exit 2) or an operational one (exit 1), in one line."""

from __future__ import annotations

import re
from typing import NoReturn

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CommandError",
    "UsageError",
    "cli_words",
    "fail",
]

PROG = "aiodiscovery"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit code 2."""


class CommandError(Exception):
    """An operational failure (etcd unreachable, credentials refused): one line, exit code 1."""


def fail(message: str) -> NoReturn:
    """Stop with a usage error."""
    raise UsageError(message)


# The library's messages name connect()'s keyword arguments; the command line has options.
_OPTION_WORDS = {
    "ca=": "--cacert",
    "cert=": "--cert",
    "key=": "--key",
    "server_name=": "--server-name",
    "username=": "--user",
    "password=": "--password",
}
_KWARG = re.compile(r"\b(?:ca|cert|key|server_name|username|password)=")


def cli_words(message: str) -> str:
    """Reword a library message for the command line (``ca=`` becomes ``--cacert``, ...)."""
    message = message.replace("pass etcd endpoints to connect()", "pass etcd URLs as --endpoints")
    message = message.replace(" to connect()", "")
    return _KWARG.sub(lambda match: _OPTION_WORDS[match[0]], message)
