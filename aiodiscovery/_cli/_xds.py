"""``aiodiscovery xds-server``: the registry as an xDS control plane, until a signal."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import anyio
import grpc

from aiodiscovery import XdsPolicy, XdsServer

from ._command import Command
from ._errors import EXIT_OK, UsageError
from ._output import say
from ._settings import ConnectSettings

__all__ = ["XDS_SERVER"]

# The policies grpc clients implement (XdsPolicy also names Envoy-only ones).
_POLICIES = ("round_robin", "ring_hash", "pick_first")
_RETRY = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:18000",
        help="where to serve ADS (default: 127.0.0.1:18000; port 0 picks a free one); an "
        "address that is not loopback needs --allow-remote",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on an address other hosts can reach (use --tls-cert/--tls-key there)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="the CA file clients check the certificate with, as the printed bootstrap names it",
    )
    parser.add_argument(
        "--lb-policy", choices=_POLICIES, default="round_robin", help="clients' balancing policy"
    )
    parser.add_argument(
        "--retry-on",
        metavar="CODES",
        default="",
        help=f"comma-separated statuses clients retry on ({', '.join(_RETRY)}); default none",
    )
    parser.add_argument(
        "--num-retries", type=int, default=1, metavar="N", help="retries per call (1-4)"
    )


def _check(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {args.listen!r}: expected HOST:PORT")
    if not args.allow_remote and not _loopback(host):
        raise UsageError(f"--listen {args.listen!r} is not a loopback address: add --allow-remote")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    try:
        _policy(args)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _policy(args: argparse.Namespace) -> XdsPolicy:
    codes = tuple(code.strip() for code in args.retry_on.split(",") if code.strip())
    return XdsPolicy(lb_policy=args.lb_policy, retry_on=codes, num_retries=args.num_retries)


def _credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    if args.tls_cert is None:
        return None
    try:
        pair = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the TLS files: {exc}") from None
    return grpc.ssl_server_credentials([pair])


async def _run(args: argparse.Namespace, settings: ConnectSettings) -> int:
    credentials = _credentials(args)
    async with settings.client() as client:
        policy = _policy(args)
        server = XdsServer(client, listen=args.listen, credentials=credentials, policy=policy)
        async with server:
            say(f"# xds-server: serving ADS on {server.address} (Ctrl-C to stop)")
            ca_file = (args.tls_ca or "ca.pem") if credentials is not None else None
            say(server.bootstrap(ca_file=ca_file))
            await anyio.sleep_forever()
    return EXIT_OK  # not reached: only a signal ends the server


XDS_SERVER = Command(
    name="xds-server",
    help="serve the registry to gRPC clients as an xDS control plane",
    description="Serve the registry over xDS v3 (ADS): a gRPC client whose bootstrap names this "
    "server resolves xds:///foo/bar/my-service to the endpoints registered under "
    "foo/bar/my-service/ and balances over them itself. Prints the address and a bootstrap "
    "(GRPC_XDS_BOOTSTRAP_CONFIG) for clients, then serves until Ctrl-C or SIGTERM.",
    configure=_configure,
    run=_run,
    check=_check,
)
