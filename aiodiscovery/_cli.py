"""The ``aiodiscovery`` command line: inspect and edit a live registry, or watch a demo.

::

    aiodiscovery list foo/bar/my-service            # a table; --json for scripts
    aiodiscovery watch foo/bar/my-service           # every change as it happens, until Ctrl-C
    aiodiscovery add foo/bar/my-service/e1 10.0.0.1:50051 --metadata '{"weight": 2}'
    aiodiscovery add foo/bar/my-service/e1 10.0.0.1:50051 --ttl 10   # leased, kept alive
    aiodiscovery del foo/bar/my-service/e1
    aiodiscovery demo                               # embedded etcd, three servers, a client

Global options (``--endpoints``, ``--dial-timeout``, ``--cacert``, ``--cert``, ``--key``,
``--user``, ``--password``) are spelled as ``etcdctl`` spells them and may come before or after the
command. Exit codes: 0 success, 1 operational error (etcd unreachable, refused credentials, ...),
2 usage error (bad option, target, key or JSON), and 128 + the signal number (130 for Ctrl-C, 143
for SIGTERM) when a signal stopped the command, after it cleaned up; a shell reports ``etcdctl``
killed by the same signal with the same number. Output into a closed pipe (``| head``) ends the
command quietly with 141, as SIGPIPE would.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import math
import os
import re
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

import anyio

from ._auth import parse_user
from ._client import DEFAULT_TIMEOUT, EtcdClient, connect
from ._endpoint import Endpoint, Operation, Update, parse_target
from ._exceptions import EtcdError
from ._keys import MAX_TTL
from ._manager import EndpointManager
from ._prefixwatch import WatchBatch
from ._registrar import Registrar
from ._urls import DEFAULT_URL

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

PROG = "aiodiscovery"
ENV_ENDPOINTS = "ETCD_ENDPOINTS"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

logger = logging.getLogger("aiodiscovery")


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit code 2."""


class CommandError(Exception):
    """An operational failure (etcd unreachable, credentials refused): one line, exit code 1."""


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


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


# ---------------------------------------------------------------------------------------------
# Argument types


_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d*)?|\.\d+)(?P<unit>ms|s|m)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def duration(text: str) -> float:
    """Parse ``etcdctl``-style durations: ``2s``, ``500ms``, ``1m``, or plain seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (try 2s, 500ms or 1.5)")
    seconds = float(match["value"]) * _UNITS[match["unit"]]
    if not seconds > 0 or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 1 <= value <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"the TTL must be 1 to {MAX_TTL} seconds, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


# ---------------------------------------------------------------------------------------------
# The parser


def _add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """The connection options; on a command they default to "not given", so that a value given
    before the command is not overwritten."""

    def default(value: Any) -> Any:
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
    group.add_argument(
        "--cacert",
        metavar="FILE",
        dest="cacert_file",
        default=default(None),
        help="CA bundle that signed etcd's cert",
    )
    group.add_argument(
        "--cert",
        metavar="FILE",
        dest="cert_file",
        default=default(None),
        help="client certificate (PEM)",
    )
    group.add_argument(
        "--key",
        metavar="FILE",
        dest="key_file",
        default=default(None),
        help="client certificate's key (PEM)",
    )
    group.add_argument(
        "--server-name",
        metavar="NAME",
        default=default(None),
        help="name to check etcd's certificate against, if not the URL's host (not in etcdctl)",
    )
    group.add_argument(
        "--user",
        metavar="NAME[:PASSWORD]",
        default=default(None),
        help="etcd user; without a password it is asked for when stdin is a terminal",
    )
    group.add_argument(
        "--password",
        default=default(None),
        help="password for --user (then --user holds only the name)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log what the client does on stderr",
    )


_EPILOG = """\
exit status: 0 success, 1 operational error (etcd unreachable, credentials refused, ...),
2 usage error (bad option, target, key or JSON), 130 after Ctrl-C and 143 after SIGTERM
(128 + the signal number, once the command has cleaned up), 141 when the reader of its output
went away (| head).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aiodiscovery`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and edit the etcd service registry that etcd's Go naming package "
        "(and aiodiscovery) use, or watch discovery at work with `demo`.",
        epilog=_EPILOG,
    )
    _add_global_options(parser, in_command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=_EPILOG,
        )
        _add_global_options(sub, in_command=True)
        return sub

    target_help = "service: foo/bar/my-service or etcd:///foo/bar/my-service"
    sub = command(
        "list",
        "list a service's endpoints",
        "List the endpoints registered under a service: key, address, metadata and lease "
        "(hex, as etcdctl prints it). Values that are not endpoints are skipped with a warning.",
    )
    sub.add_argument("target", metavar="TARGET", help=target_help)
    sub.add_argument("--json", action="store_true", help="print a JSON array instead")

    sub = command(
        "watch",
        "print a service's changes as they happen",
        "Print the current endpoints, then every change as it happens (one batch per etcd "
        "revision), until Ctrl-C or SIGTERM. Survives etcd restarts and compaction.",
    )
    sub.add_argument("target", metavar="TARGET", help=target_help)
    sub.add_argument("--json", action="store_true", help="print one JSON object per batch")

    sub = command(
        "add",
        "register an endpoint (optionally leased and kept alive)",
        "Put an endpoint at KEY, in the Go client's format. The service is KEY up to its last "
        "'/'. With --ttl, grant a lease, put under it and keep it alive until Ctrl-C or SIGTERM, "
        "then revoke it (like `etcdctl lease keep-alive`, which leaves the lease to expire).",
    )
    sub.add_argument("key", metavar="KEY", help="endpoint key, e.g. foo/bar/my-service/e1")
    sub.add_argument("addr", metavar="ADDR", help="address clients dial, e.g. 10.0.0.1:50051")
    sub.add_argument("--metadata", metavar="JSON", help="any JSON value (default: null)")
    sub.add_argument(
        "--ttl", metavar="SECONDS", type=_ttl, help="lease TTL; keep the key alive until stopped"
    )

    sub = command(
        "del",
        "delete an endpoint",
        "Delete the endpoint at KEY and print how many keys were deleted (0 or 1).",
    )
    sub.add_argument("key", metavar="KEY", help="endpoint key, e.g. foo/bar/my-service/e1")

    sub = command(
        "demo",
        "watch discovery work: etcd, three servers, a client",
        "Start an embedded etcd (unless --endpoints is given; $ETCD_ENDPOINTS is not used "
        "here), three gRPC greeter servers as child processes that register themselves, and a "
        "client calling them through resolve(). Then one server leaves gracefully, one "
        "crashes (SIGKILL) and a new one joins, while a line per second shows where the calls "
        "go. Exits 0 when no call failed except those in flight on the crashed server.",
    )
    sub.add_argument(
        "--service",
        help="service name (default: demo/greeter on the embedded etcd, "
        "demo/greeter-<random> on yours)",
    )
    sub.add_argument(
        "--phase-seconds",
        type=_positive_float,
        default=3.0,
        metavar="S",
        help="how long each phase runs (default: 3)",
    )
    sub.add_argument(
        "--callers", type=_positive_int, default=4, help="concurrent callers (default: 4)"
    )
    sub.add_argument(
        "--rate",
        type=_positive_float,
        default=20.0,
        metavar="N",
        help="calls per second per caller (default: 20)",
    )
    sub.add_argument(
        "--ttl", type=_ttl, default=2, help="servers' lease TTL in seconds (default: 2)"
    )
    return parser


# ---------------------------------------------------------------------------------------------
# Connection settings


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
            return await connect(self.urls, **self.kwargs())
        except EtcdError as exc:
            raise CommandError(cli_words(str(exc))) from exc
        except ValueError as exc:
            raise UsageError(cli_words(str(exc))) from None
        except OSError as exc:
            # An unreadable certificate file (EtcdUnavailableError, an OSError too, is above).
            raise UsageError(cli_words(exc.strerror or str(exc))) from None


def _credentials(args: argparse.Namespace, stdin: TextIO) -> tuple[str | None, str | None]:
    if args.user is None:
        if args.password is not None:
            _fail("--password needs --user")
        return None, None
    try:
        name, password = parse_user(args.user)
    except ValueError as exc:
        _fail(f"--user: {exc}")
    if args.password is not None:
        if password is not None:
            _fail("give the password either in --user NAME:PASSWORD or with --password, not both")
        password = args.password
    if password is None:
        if not stdin.isatty():
            _fail(
                f"--user {name} has no password and stdin is not a terminal to ask for it; "
                "use --user NAME:PASSWORD or --password"
            )
        try:
            password = getpass.getpass(f"Password for etcd user {name}: ")
        except EOFError:
            _fail("no password given")
    return name, password


def _check_demo_args(args: argparse.Namespace) -> None:
    if args.command != "demo" or args.endpoints:
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
        )
        if value is not None
    ]
    if given:
        _fail(
            f"demo: {', '.join(given)} only make sense with --endpoints (your own etcd); "
            "the embedded etcd needs none"
        )


def settings_from_args(
    args: argparse.Namespace, *, environ: dict[str, str] | None = None, stdin: TextIO | None = None
) -> ConnectSettings:
    """Resolve the global options (and ``$ETCD_ENDPOINTS``) into :class:`ConnectSettings`."""
    env = os.environ if environ is None else environ
    urls = args.endpoints or env.get(ENV_ENDPOINTS) or DEFAULT_URL
    username, password = _credentials(args, sys.stdin if stdin is None else stdin)
    return ConnectSettings(
        urls=urls,
        timeout=args.dial_timeout,
        ca=args.cacert_file,
        cert=args.cert_file,
        key=args.key_file,
        server_name=args.server_name,
        username=username,
        password=password,
    )


# ---------------------------------------------------------------------------------------------
# Validation and formatting helpers


def _target(target: str) -> str:
    try:
        return parse_target(target)
    except ValueError as exc:
        _fail(cli_words(str(exc)))


def service_of(key: str) -> str:
    """The service an endpoint key belongs to: the key up to its last ``/``.

    Raises :class:`UsageError` unless ``key`` is ``<service>/<id>`` with a valid service.
    """
    service, _, ident = key.rpartition("/")
    if not service or not ident:
        _fail(f"key {key!r} must look like <service>/<id>, e.g. foo/bar/my-service/e1")
    prefix = _target(service)
    # The rule EndpointManager.check_key applies, checked before anything is dialled.
    if not key.startswith(prefix):
        _fail(f"key {key!r} is not under its service prefix {prefix!r}; write it without etcd://")
    return service


def _metadata(text: str | None) -> Any:
    if text is None:
        return None

    def reject(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=reject)
    except ValueError as exc:
        _fail(f"--metadata is not valid JSON: {exc}")


def _lease_hex(lease: int) -> str | None:
    # etcdctl prints lease ids as %016x.
    return f"{lease:016x}" if lease else None


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _safe(text: str) -> str:
    """Keys and addresses come from anyone who can write to etcd: no escape codes on the tty."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _print(*lines: str) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Commands


async def _cmd_list(args: argparse.Namespace, settings: ConnectSettings) -> int:
    prefix = _target(args.target)
    client = await settings.connect()
    try:
        # Not list_endpoints(): it drops the lease, which the table shows.
        batch = await EndpointManager(client, args.target).list_batch()
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
    rows: list[tuple[str, Endpoint, int]] = []
    for update in batch.updates:
        assert update.endpoint is not None  # a listing holds adds only
        rows.append((update.key, update.endpoint, update.lease))
    if args.json:
        doc = [
            {"key": key, "addr": ep.addr, "metadata": ep.metadata, "lease": _lease_hex(lease)}
            for key, ep, lease in rows
        ]
        _print(json.dumps(doc, ensure_ascii=False, indent=2))
    elif not rows:
        _print(f"no endpoints under {prefix}")
    else:
        table = [("KEY", "ADDRESS", "METADATA", "LEASE")]
        table += [
            (
                _safe(key),
                _safe(ep.addr),
                "-" if ep.metadata is None else _safe(_compact_json(ep.metadata)),
                _lease_hex(lease) or "-",
            )
            for key, ep, lease in rows
        ]
        _print(*_table(table))
    return EXIT_OK


def _update_json(update: Update) -> dict[str, Any]:
    if update.op is Operation.DELETE:
        return {"op": "delete", "key": update.key}
    assert update.endpoint is not None
    return {
        "op": "add",
        "key": update.key,
        "addr": update.endpoint.addr,
        "metadata": update.endpoint.metadata,
        "lease": _lease_hex(update.lease),
    }


def _update_line(update: Update) -> str:
    if update.op is Operation.DELETE:
        return f"DELETE {_safe(update.key)}"
    assert update.endpoint is not None
    metadata = _safe(_compact_json(update.endpoint.metadata))
    lease = _lease_hex(update.lease) or "-"
    return f"ADD    {_safe(update.key)}  {_safe(update.endpoint.addr)}  {metadata}  lease={lease}"


async def _cmd_watch(args: argparse.Namespace, settings: ConnectSettings) -> int:
    prefix = _target(args.target)
    client = await settings.connect()
    try:
        batches = EndpointManager(client, args.target).watch_batches()
        async with contextlib.aclosing(batches):
            first = True
            async for batch in batches:
                _print(*_batch_lines(batch, prefix, first=first, as_json=args.json))
                first = False
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
    return EXIT_OK  # not reached: only a signal ends a watch


def _batch_lines(batch: WatchBatch, prefix: str, *, first: bool, as_json: bool) -> list[str]:
    if as_json:
        doc = {
            "revision": batch.revision,
            "initial": first,
            "relist": batch.relist and not first,
            "updates": [_update_json(u) for u in batch.updates],
        }
        return [json.dumps(doc, ensure_ascii=False, separators=(",", ":"))]
    if first:
        header = (
            f"# revision {batch.revision}: {len(batch.updates)} endpoints under {prefix}; "
            "watching for changes (Ctrl-C to stop)"
        )
    elif batch.relist:
        header = f"# revision {batch.revision}: listed again after a gap"
    else:
        header = f"# revision {batch.revision}"
    return [header, *(_update_line(u) for u in batch.updates)]


async def _cmd_add(args: argparse.Namespace, settings: ConnectSettings) -> int:
    service = service_of(args.key)
    try:
        endpoint = Endpoint(args.addr, _metadata(args.metadata))
    except ValueError as exc:
        _fail(str(exc))
    client = await settings.connect()
    try:
        if args.ttl is None:
            await EndpointManager(client, service).add_endpoint(args.key, endpoint)
            _print("OK")
            return EXIT_OK
        try:
            registrar = Registrar(client, service, endpoint, key=args.key, ttl=args.ttl)
        except (ValueError, TypeError) as exc:
            _fail(str(exc))
        async with registrar:
            stats = registrar.statistics()
            _print(
                f"registered {args.key} -> {endpoint.addr} with lease "
                f"{_lease_hex(stats.lease_id or 0)} (TTL {stats.ttl} s); keeping it alive until "
                "Ctrl-C"
            )
            try:
                await anyio.sleep_forever()
            finally:
                # Read again: a lost lease was replaced by a new one meanwhile.
                lease = _lease_hex(registrar.lease_id or 0)
                _print(f"stopping: revoking lease {lease}, which deletes {args.key}")
        return EXIT_OK  # not reached
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()


async def _cmd_del(args: argparse.Namespace, settings: ConnectSettings) -> int:
    service = service_of(args.key)
    client = await settings.connect()
    try:
        deleted = await EndpointManager(client, service).delete_endpoint(args.key)
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
    # etcdctl del prints the number of keys deleted.
    _print(str(deleted))
    return EXIT_OK


async def _cmd_demo(args: argparse.Namespace, settings: ConnectSettings) -> int:
    from ._demo import DemoOptions, run_demo  # noqa: PLC0415 - only the demo needs it

    options = DemoOptions(
        settings=settings if args.endpoints else None,
        service=args.service,
        phase_seconds=args.phase_seconds,
        callers=args.callers,
        rate=args.rate,
        ttl=args.ttl,
    )
    if args.service is not None:
        _target(args.service)
    return await run_demo(options)


_COMMANDS: dict[str, Callable[[argparse.Namespace, ConnectSettings], Awaitable[int]]] = {
    "list": _cmd_list,
    "watch": _cmd_watch,
    "add": _cmd_add,
    "del": _cmd_del,
    "demo": _cmd_demo,
}


# ---------------------------------------------------------------------------------------------
# Running a command


@dataclass
class _Outcome:
    code: int | None = None
    error: Exception | None = None
    signum: int | None = None


async def _run(
    func: Callable[[argparse.Namespace, ConnectSettings], Awaitable[int]],
    args: argparse.Namespace,
    settings: ConnectSettings,
) -> _Outcome:
    """Run one command; SIGINT or SIGTERM cancels it, and its cleanup runs before we return."""
    outcome = _Outcome()
    work = anyio.CancelScope()

    async def on_signals() -> None:
        # The receiver stays installed until the command has cleaned up: a second Ctrl-C does
        # not cut the cleanup short (it is bounded in time anyway).
        with anyio.open_signal_receiver(*_SIGNALS) as signals:
            async for signum in signals:
                if outcome.signum is None:
                    outcome.signum = int(signum)
                    work.cancel()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(on_signals)
        with work:
            try:
                outcome.code = await func(args, settings)
            except Exception as exc:
                outcome.error = exc
        task_group.cancel_scope.cancel()
    return outcome


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{PROG}: {record.levelname.lower()}: {text}"


class _RegistrationNews(logging.Filter):
    """For ``add --ttl``: warnings, plus the news that a lost registration is back or that the
    lease was revoked at exit (the Registrar logs those at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.getMessage().startswith(("re-registered ", "unregistered "))


@contextlib.contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Our log lines on stderr for one main() call; the logger is as before afterwards, so that
    main() can run again in one process (tests) without doubling every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    if args.debug:
        logger.setLevel(logging.DEBUG)
    elif args.command == "add" and args.ttl is not None:
        logger.setLevel(logging.INFO)
        handler.addFilter(_RegistrationNews())
    else:
        logger.setLevel(logging.WARNING)

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        # The library's warnings (a password over plaintext) in the command line's own format.
        print(f"{PROG}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _error(message: str, debug: bool) -> None:
    lines = str(message).strip().splitlines() or ["unknown error"]
    text = lines[0]
    if len(lines) > 1 and not debug:
        text += " (--debug shows more)"
    print(f"{PROG}: error: {text}", file=sys.stderr)
    if debug and len(lines) > 1:
        print("\n".join(lines[1:]), file=sys.stderr)
    sys.stderr.flush()


_OPERATIONAL = CommandError | EtcdError | RuntimeError | TimeoutError | OSError


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors inside ``error``: task groups wrap what their tasks raise in groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for member in error.exceptions for leaf in _leaves(member)]
    return [error]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with usage on a bad command line
    with _logging_to_stderr(args):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    debug = bool(args.debug)
    try:
        _check_demo_args(args)
        settings = settings_from_args(args)
        outcome = anyio.run(_run, _COMMANDS[args.command], args, settings)
    except UsageError as exc:
        _error(str(exc), debug)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C at the password prompt, or before the signal receiver was in place.
        return 128 + signal.SIGINT
    if outcome.signum is not None:
        return 128 + outcome.signum
    if outcome.error is None:
        assert outcome.code is not None
        return outcome.code
    errors = _leaves(outcome.error)
    if any(isinstance(error, BrokenPipeError) for error in errors):
        # `aiodiscovery watch svc | head -3`: the reader is gone; stop quietly, as cat does. (Other
        # errors beside it are tasks that saw the same ending.) No flush at exit may fail either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    if not all(isinstance(error, UsageError | _OPERATIONAL) for error in errors):
        raise outcome.error  # a bug: show the whole traceback
    # Several errors are several tasks failing alike (three servers that cannot register): the
    # first one tells the story.
    error = errors[0]
    if debug:
        logger.debug("failure", exc_info=outcome.error)
    _error(str(error), debug)
    return EXIT_USAGE if isinstance(error, UsageError) else EXIT_ERROR
