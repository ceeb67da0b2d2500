"""Which TCP connections belong to a process: how a peer proxy tells one member's dials apart."""

from __future__ import annotations

import contextlib
import os

__all__ = ["local_ports", "tcp_ports"]

_ESTABLISHED = "01"


def local_ports(pid: int | None) -> set[int]:
    """The local ports of the process's TCP sockets (Linux, from ``/proc``; empty elsewhere or
    when ``pid`` is ``None``).

    Members dial each other from ephemeral ports on 127.0.0.1, so the port a proxy sees a
    connection come from is the only thing that names the member that opened it.
    """
    return set() if pid is None else tcp_ports(pid)


def tcp_ports(pid: int, *, remote: bool = False) -> set[int]:
    """The local ports of the process's TCP sockets, or with ``remote`` the remote ports of its
    established connections (Linux, from ``/proc``; empty elsewhere)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    # gRPC dials IPv4 through IPv6 sockets (v4-mapped addresses): read both tables.
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as table:
            next(table)
            for line in table:
                fields = line.split()
                # Fields: sl, local address, remote address, state, ..., inode (the 10th).
                if fields[9] not in inodes or (remote and fields[3] != _ESTABLISHED):
                    continue
                ports.add(int(fields[2 if remote else 1].rsplit(":", 1)[1], 16))
    return ports
