"""The ``demo`` command: its options, and which of the global ones it takes."""

from __future__ import annotations

import argparse

from .. import _argtypes
from .._command import Command
from .._errors import fail
from .._settings import ConnectSettings
from .._targets import target_prefix
from ._options import DemoOptions

__all__ = ["DEMO"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--service",
        help="service name (default: demo/greeter on the embedded etcd, "
        "demo/greeter-<random> on yours)",
    )
    parser.add_argument(
        "--phase-seconds",
        type=_argtypes.positive_float,
        default=3.0,
        metavar="S",
        help="how long each phase runs (default: 3)",
    )
    parser.add_argument(
        "--callers", type=_argtypes.positive_int, default=4, help="concurrent callers (default: 4)"
    )
    parser.add_argument(
        "--rate",
        type=_argtypes.positive_float,
        default=20.0,
        metavar="N",
        help="calls per second per caller (default: 20)",
    )
    parser.add_argument(
        "--ttl", type=_argtypes.ttl, default=2, help="servers' lease TTL in seconds (default: 2)"
    )


def _embedded(args: argparse.Namespace) -> bool:
    return not args.endpoints


def _check(args: argparse.Namespace) -> None:
    if args.service is not None:
        target_prefix(args.service)
    if not _embedded(args):
        return
    given = [
        option
        for option, value in (
            ("--cacert", args.cacert_file),
            ("--cert", args.cert_file),
            ("--key", args.key_file),
            ("--server-name", args.server_name),
            ("--user", args.user),
            ("--password", args.password),
            ("--password-file", args.password_file),
            ("--password-stdin", args.password_stdin or None),
        )
        if value is not None
    ]
    if given:
        fail(
            f"demo: {', '.join(given)} only make sense with --endpoints (your own etcd); "
            "the embedded etcd needs none"
        )


async def _run(args: argparse.Namespace, settings: ConnectSettings) -> int:
    from ._run import run_demo  # noqa: PLC0415 - grpc servers and the rest: only for the demo

    options = DemoOptions(
        settings=None if _embedded(args) else settings,
        service=args.service,
        phase_seconds=args.phase_seconds,
        callers=args.callers,
        rate=args.rate,
        ttl=args.ttl,
    )
    return await run_demo(options)


DEMO = Command(
    name="demo",
    help="watch discovery work: etcd, three servers, a client",
    description="Start an embedded etcd (unless --endpoints is given; the ETCDCTL_* and "
    "ETCD_ENDPOINTS variables are not used here), three gRPC greeter servers as child "
    "processes that register themselves, and a client calling them through resolve(). Then one "
    "server leaves gracefully, one crashes (SIGKILL) and a new one joins, while a line per "
    "second shows where the calls go. Exits 0 when no call failed except those sent to the "
    "crashed server.",
    configure=_configure,
    run=_run,
    check=_check,
    reads_environment=lambda args: not _embedded(args),
)
