"""Running ``etcdctl`` (the one beside the etcd binary): credentials through its environment,
never its argv."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from ._process import EtcdBinary, etcd_binary

__all__ = ["Credentials", "enable_auth", "etcdctl_env", "run_etcdctl", "run_etcdctl_async"]

_TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    """An etcd user and password; the password stays out of ``repr``."""

    user: str
    password: str = field(repr=False)


def etcdctl_env(credentials: Credentials | None = None) -> dict[str, str]:
    """The environment for ``etcdctl``: API v3 and, with ``credentials``, ``ETCDCTL_USER`` and
    ``ETCDCTL_PASSWORD`` (etcdctl reads every global flag from ``ETCDCTL_<FLAG>``), so that no
    password appears on a command line, where ``ps`` shows it to every local user.

    Other ``ETCDCTL_*`` settings of the caller's environment are left out: they would point
    etcdctl elsewhere, or clash with the flags the kit passes (etcdctl refuses both).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    if credentials is not None:
        env["ETCDCTL_USER"] = credentials.user
        env["ETCDCTL_PASSWORD"] = credentials.password
    return env


def _command(
    endpoints: str, args: Sequence[str], flags: Sequence[str], etcd: EtcdBinary | None
) -> list[str]:
    return [
        str(etcd_binary("etcdctl", etcd=etcd)),
        f"--endpoints={endpoints}",
        "--command-timeout=5s",
        *flags,
        *args,
    ]


def _output(args: Sequence[str], returncode: int, stdout: bytes, stderr: bytes, check: bool) -> str:
    if check and returncode != 0:
        raise RuntimeError(
            f"etcdctl {' '.join(args)} failed ({returncode}): "
            f"{stderr.decode(errors='replace').strip()}"
        )
    return stdout.decode(errors="replace")


def run_etcdctl(
    endpoints: str,
    *args: str,
    check: bool = True,
    flags: Sequence[str] = (),
    credentials: Credentials | None = None,
    stdin: str | None = None,
    etcd: EtcdBinary | None = None,
) -> str:
    """Run ``etcdctl`` with ``--endpoints`` and return its standard output.

    The ``etcdctl`` is the one beside the etcd binary ``etcd`` (see :func:`etcd_binary`, which
    also says which etcd runs when it is ``None``). ``flags`` (TLS) are passed along but never
    quoted in an error message; ``credentials`` go through the environment (see
    :func:`etcdctl_env`); ``stdin`` is written to its input.
    """
    result = subprocess.run(
        _command(endpoints, args, flags, etcd),
        input=None if stdin is None else stdin.encode(),
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=_TIMEOUT,
        check=False,
        env=etcdctl_env(credentials),
    )
    return _output(args, result.returncode, result.stdout, result.stderr, check)


async def run_etcdctl_async(
    endpoints: str,
    *args: str,
    check: bool = True,
    flags: Sequence[str] = (),
    credentials: Credentials | None = None,
    stdin: str | None = None,
    etcd: EtcdBinary | None = None,
) -> str:
    """:func:`run_etcdctl` without blocking the event loop."""
    with anyio.fail_after(_TIMEOUT):
        result = await anyio.run_process(
            _command(endpoints, args, flags, etcd),
            input=b"" if stdin is None else stdin.encode(),
            check=False,
            env=etcdctl_env(credentials),
        )
    return _output(args, result.returncode, result.stdout, result.stderr, check)


def _check_password(password: str) -> None:
    """Refuse a password ``etcdctl user add`` cannot read from its input: it reads one word."""
    if not password or any(c.isspace() for c in password):
        raise ValueError(
            "etcdctl reads a new user's password from its input as one word: use a non-empty "
            "password without blanks"
        )


def enable_auth(etcdctl: Callable[..., str], user: str, password: str) -> Credentials:
    """Add ``root`` (and ``user``) with ``password`` and the root role, then turn auth on.

    ``etcdctl(*args, stdin=...)`` runs one command. The password goes to ``user add`` through its
    input (``--interactive=false``), never its arguments.
    """
    _check_password(password)
    for name in sorted({"root", user}):
        etcdctl("user", "add", name, "--interactive=false", stdin=password + "\n")
        etcdctl("user", "grant-role", name, "root")
    etcdctl("auth", "enable")
    return Credentials(user, password)
