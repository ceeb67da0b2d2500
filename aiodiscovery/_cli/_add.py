"""``aiodiscovery add``: put an endpoint in Go's format, or keep it alive under a lease."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import urlencode

import anyio

from aiodiscovery import Endpoint, EndpointManager, Registrar

from . import _argtypes
from ._command import Command
from ._errors import EXIT_OK, fail
from ._output import lease_hex, safe, say
from ._settings import ConnectSettings
from ._targets import KEY_HELP, service_of

__all__ = ["ADD"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY", help=KEY_HELP)
    parser.add_argument("addr", metavar="ADDR", help="address clients dial, e.g. 10.0.0.1:50051")
    parser.add_argument(
        "--weight",
        metavar="N",
        type=_argtypes.weight,
        help="the endpoint's weight for weighted balancing (1 to 2**32-1), written in the "
        "metadata as weight=N",
    )
    parser.add_argument(
        "--zone",
        metavar="Z",
        help="the endpoint's zone (locality), written in the metadata as zone=Z",
    )
    parser.add_argument(
        "--metadata",
        metavar="JSON",
        help="any JSON value instead (default: null); a JSON object crashes grpc-go clients "
        "that balance over it (etcd-io/etcd#19700)",
    )
    parser.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=_argtypes.ttl,
        help="lease TTL; keep the key alive until stopped",
    )


def _metadata(args: argparse.Namespace) -> Any:
    attributes = {
        name: value
        for name, value in (("weight", args.weight), ("zone", args.zone))
        if value is not None
    }
    if attributes:
        if args.metadata is not None:
            fail("give --metadata or --weight/--zone, not both")
        if args.zone == "":
            fail("--zone must not be empty")
        # Attributes as a string in URL query form, names sorted ("weight=2&zone=eu-1"): Go
        # clients read a string safely (url.ParseQuery), where an object can panic them.
        return urlencode(sorted((name, str(value)) for name, value in attributes.items()))
    return _json_metadata(args.metadata)


def _json_metadata(text: str | None) -> Any:
    if text is None:
        return None

    def reject(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=reject)
    except ValueError as exc:
        fail(f"--metadata is not valid JSON: {exc}")
    except RecursionError:
        fail("--metadata is nested too deeply to be read here (use etcdctl put for such values)")


async def _run(args: argparse.Namespace, settings: ConnectSettings) -> int:
    service = service_of(args.key)
    try:
        endpoint = Endpoint(args.addr, _metadata(args))
    except ValueError as exc:
        fail(str(exc))
    async with settings.client() as client:
        if args.ttl is None:
            await EndpointManager(client, service).add_endpoint(args.key, endpoint)
            say("OK")
            return EXIT_OK
        try:
            registrar = Registrar(client, service, endpoint, key=args.key, ttl=args.ttl)
        except (ValueError, TypeError) as exc:
            fail(str(exc))
        async with registrar:
            stats = registrar.statistics()
            say(
                f"registered {safe(args.key)} -> {safe(endpoint.addr)} with lease "
                f"{lease_hex(stats.lease_id or 0)} (TTL {stats.ttl} s); keeping it alive until "
                "Ctrl-C"
            )
            try:
                await anyio.sleep_forever()
            finally:
                # Read again: a lost lease was replaced by a new one meanwhile.
                lease = lease_hex(registrar.lease_id or 0)
                say(f"stopping: revoking lease {lease}, which deletes {safe(args.key)}")
    return EXIT_OK  # not reached: only a signal ends a kept-alive registration


ADD = Command(
    name="add",
    help="register an endpoint (optionally leased and kept alive)",
    description="Put an endpoint at KEY, in the Go client's format. The service is KEY up to "
    "its last '/'. --weight and --zone write the metadata as a string that every Go client "
    "reads safely (weight=2&zone=eu-1). With --ttl, grant a lease, put under it and keep it "
    "alive until Ctrl-C or SIGTERM, then revoke it (like `etcdctl lease keep-alive`, which "
    "leaves the lease to expire).",
    configure=_configure,
    run=_run,
)
