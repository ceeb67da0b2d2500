"""``aiodiscovery del``: delete one endpoint, print how many keys went (as etcdctl does)."""

from __future__ import annotations

import argparse

from aiodiscovery import EndpointManager

from ._command import Command
from ._errors import EXIT_OK
from ._output import say
from ._settings import ConnectSettings
from ._targets import KEY_HELP, service_of

__all__ = ["DEL"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY", help=KEY_HELP)


async def _run(args: argparse.Namespace, settings: ConnectSettings) -> int:
    service = service_of(args.key)
    async with settings.client() as client:
        deleted = await EndpointManager(client, service).delete_endpoint(args.key)
    say(str(deleted))
    return EXIT_OK


DEL = Command(
    name="del",
    help="delete an endpoint",
    description="Delete the endpoint at KEY and print how many keys were deleted (0 or 1).",
    configure=_configure,
    run=_run,
)
