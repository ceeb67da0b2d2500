"""Connection settings: the etcdctl-style options (and ``$ETCD_ENDPOINTS``), turned into what
:func:`aiodiscovery.connect` takes."""

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
from ._errors import CommandError, UsageError, cli_words

__all__ = ["ENV_ENDPOINTS", "ConnectSettings", "add_connection_options", "settings_from_args"]

ENV_ENDPOINTS = "ETCD_ENDPOINTS"


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
        help=f"comma-separated etcd URLs (default: ${ENV_ENDPOINTS}, else {DEFAULT_URL}); "
        "https:// URLs use TLS",
    )
    group.add_argument(
        "--dial-timeout",
        metavar="DURATION",
        type=duration,
        default=default(DEFAULT_TIMEOUT),
        help=f"how long to wait for etcd, at connect and for each request, e.g. 2s or 500ms "
        f"(default: {DEFAULT_TIMEOUT:g}s)",
    )
    for dest, option, text in (
        ("cacert_file", "--cacert", "CA bundle that signed etcd's cert"),
        ("cert_file", "--cert", "client certificate (PEM)"),
        ("key_file", "--key", "client certificate's key (PEM)"),
    ):
        group.add_argument(option, metavar="FILE", dest=dest, default=default(None), help=text)
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
    """Resolve the global options (and ``$ETCD_ENDPOINTS``) into settings."""
    urls = args.endpoints or environ.get(ENV_ENDPOINTS) or DEFAULT_URL
    user = credentials(args, stdin)
    return ConnectSettings(
        urls=urls,
        timeout=args.dial_timeout,
        ca=args.cacert_file,
        cert=args.cert_file,
        key=args.key_file,
        server_name=args.server_name,
        username=None if user is None else user.username,
        password=None if user is None else user.password,
    )
