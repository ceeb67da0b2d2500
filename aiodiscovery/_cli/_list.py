"""``aiodiscovery list``: a service's endpoints, as a table or as JSON."""

from __future__ import annotations

import argparse

from aiodiscovery import EndpointManager, address_refusal

from ._command import Command
from ._errors import EXIT_OK
from ._output import compact_json, json_text, lease_hex, safe, say, table
from ._settings import ConnectSettings
from ._targets import TARGET_HELP, target_prefix

__all__ = ["LIST"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument("--json", action="store_true", help="print a JSON array instead")


async def _run(args: argparse.Namespace, settings: ConnectSettings) -> int:
    prefix = target_prefix(args.target)
    async with settings.client() as client:
        # list_batch(), not list_endpoints(): the table shows each key's lease.
        batch = await EndpointManager(client, args.target).list_batch()
    rows = []
    for update in batch.updates:
        assert update.endpoint is not None  # a listing holds adds only
        endpoint = update.endpoint
        rows.append((update.key, endpoint, update.lease, address_refusal(endpoint.addr)))
    if args.json:
        doc = [
            {
                "key": key,
                "addr": ep.addr,
                "metadata": ep.metadata,
                "lease": lease_hex(lease),
                "refused": refused,
            }
            for key, ep, lease, refused in rows
        ]
        say(json_text(doc, indent=2))
    elif not rows:
        say(f"no endpoints under {safe(prefix)}")
    else:
        # The column appears only when it says something: most listings have nothing refused.
        marked = any(refused is not None for *_, refused in rows)
        cells = [("KEY", "ADDRESS", "METADATA", "LEASE", "REFUSED")[: 5 if marked else 4]]
        cells += [
            (
                safe(key),
                safe(ep.addr),
                "-" if ep.metadata is None else safe(compact_json(ep.metadata)),
                lease_hex(lease) or "-",
                safe(refused or "-"),
            )[: 5 if marked else 4]
            for key, ep, lease, refused in rows
        ]
        say(*table(cells))
    return EXIT_OK


LIST = Command(
    name="list",
    help="list a service's endpoints",
    description="List the endpoints registered under a service: key, address, metadata and "
    "lease (hex, as etcdctl prints it). Values that are not endpoints are skipped with a warning. "
    "An address a client's pool would not dial by default (not host:port, or an unspecified, "
    'link-local or multicast IP) is marked with the reason (REFUSED; in JSON, "refused").',
    configure=_configure,
    run=_run,
)
