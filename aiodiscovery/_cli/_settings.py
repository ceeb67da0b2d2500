"""Connection settings: the etcdctl-style options, else their ``ETCDCTL_*`` variables, else
defaults, turned into what :func:`aiodiscovery.connect` takes.

An option beats its variable (etcdctl refuses to run with both set; we let the option win). The
endpoints come from ``--endpoints``, else ``$ETCDCTL_ENDPOINTS``, else ``$ETCD_ENDPOINTS`` (the
name this command read first), else ``http://127.0.0.1:2379``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio

import aiodiscovery
from aiodiscovery import DEFAULT_TIMEOUT, DEFAULT_URL, EtcdClient, EtcdError

from ._argtypes import duration
from ._credentials import add_credential_options, credentials
from ._errors import CommandError, UsageError, cli_words, fail

__all__ = ["ENV_ENDPOINTS", "ConnectSettings", "add_connection_options", "settings_from_args"]

#: Where the endpoints come from when ``--endpoints`` is not given, first found first.
ENV_ENDPOINTS = ("ETCDCTL_ENDPOINTS", "ETCD_ENDPOINTS")
ENV_DIAL_TIMEOUT = "ETCDCTL_DIAL_TIMEOUT"
# Option destination -> the etcdctl variable that stands in for it.
_ENV_FILES = {
    "cacert_file": "ETCDCTL_CACERT",
    "cert_file": "ETCDCTL_CERT",
    "key_file": "ETCDCTL_KEY",
}


@dataclass(frozen=True)
class ConnectSettings:
    """What :func:`aiodiscovery.connect` needs, from the global options. No secret in ``repr``."""

    urls: str
    timeout: float
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`aiodiscovery.connect` (besides ``urls``)."""
        return {
            "timeout": self.timeout,
            "ca": self.ca,
            "cert": self.cert,
            "key": self.key,
            "server_name": self.server_name,
            "username": self.username,
            "password": self.password,
        }

    async def connect(self) -> EtcdClient:
        """Connect; bad settings (URL, TLS files) are usage errors."""
        try:
            return await aiodiscovery.connect(self.urls, **self.kwargs())
        except EtcdError as exc:
            raise CommandError(cli_words(str(exc))) from exc
        except ValueError as exc:
            raise UsageError(cli_words(str(exc))) from None
        except OSError as exc:
            # An unreadable certificate file (EtcdUnavailableError, an OSError too, is above).
            raise UsageError(cli_words(exc.strerror or str(exc))) from None

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[EtcdClient]:
        """A connected client for one command, closed even when a signal cancelled it."""
        client = await self.connect()
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()


def add_connection_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """The connection options; on a command they default to "not given", so that a value given
    before the command is not overwritten."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if in_command else value

    group = parser.add_argument_group("etcd connection (as etcdctl spells them)")
    group.add_argument(
        "--endpoints",
        metavar="URLS",
        default=default(None),
        help=f"comma-separated etcd URLs (default: ${ENV_ENDPOINTS[0]}, else "
        f"${ENV_ENDPOINTS[1]}, else {DEFAULT_URL}); https:// URLs use TLS",
    )
    group.add_argument(
        "--dial-timeout",
        metavar="DURATION",
        type=duration,
        default=default(None),
        help=f"how long to wait for etcd, at connect and for each request, e.g. 2s or 500ms "
        f"(default: ${ENV_DIAL_TIMEOUT}, else {DEFAULT_TIMEOUT:g}s)",
    )
    for dest, option, text in (
        ("cacert_file", "--cacert", "CA bundle that signed etcd's cert"),
        ("cert_file", "--cert", "client certificate (PEM)"),
        ("key_file", "--key", "client certificate's key (PEM)"),
    ):
        group.add_argument(
            option,
            metavar="FILE",
            dest=dest,
            default=default(None),
            help=f"{text} (default: ${_ENV_FILES[dest]})",
        )
    group.add_argument(
        "--server-name",
        metavar="NAME",
        default=default(None),
        help="name to check etcd's certificate against, if not the URL's host (not in etcdctl)",
    )
    add_credential_options(group, default)
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log what the client does on stderr",
    )


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: TextIO
) -> ConnectSettings:
    """Resolve the global options, then the ``ETCDCTL_*`` variables, into settings."""

    def env(name: str) -> str | None:
        return environ.get(name) or None

    urls = args.endpoints or next(filter(None, map(env, ENV_ENDPOINTS)), None) or DEFAULT_URL
    timeout = args.dial_timeout or _env_duration(env(ENV_DIAL_TIMEOUT)) or DEFAULT_TIMEOUT
    files: dict[str, str | None] = {
        dest: getattr(args, dest) or env(name) for dest, name in _ENV_FILES.items()
    }
    user = credentials(args, environ, stdin)
    return ConnectSettings(
        urls=urls,
        timeout=timeout,
        ca=files["cacert_file"],
        cert=files["cert_file"],
        key=files["key_file"],
        server_name=args.server_name,
        username=None if user is None else user.username,
        password=None if user is None else user.password,
    )


def _env_duration(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return duration(text)
    except argparse.ArgumentTypeError as exc:
        fail(f"${ENV_DIAL_TIMEOUT}: {exc}")
