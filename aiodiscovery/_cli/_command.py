"""What a command is to the parser and to ``main()``: its help, its options, how it runs."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._settings import ConnectSettings

__all__ = ["Command"]


def _always(_args: argparse.Namespace) -> bool:
    return True


def _anything(_args: argparse.Namespace) -> None:
    pass


@dataclass(frozen=True)
class Command:
    """One ``aiodiscovery`` command.

    ``configure`` adds its options to its subparser; ``check`` raises a usage error for
    options that do not go together, before any setting is resolved (or a password asked for);
    ``run`` does the work and returns the exit status. ``reads_environment`` says whether the
    ``ETCDCTL_*`` variables apply (not to the demo's embedded etcd).
    """

    name: str
    help: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, ConnectSettings], Awaitable[int]]
    check: Callable[[argparse.Namespace], None] = _anything
    reads_environment: Callable[[argparse.Namespace], bool] = _always
