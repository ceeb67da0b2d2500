"""What the commands print on stdout: lines, tables, leases and JSON, all safe for a terminal.

Keys, addresses and metadata come from anyone who can write to etcd: every piece of registry text
goes through :func:`aiodiscovery.safe` (the library's rule for its log lines) before it is
printed, so that a newline cannot forge a line nor an escape sequence repaint the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from aiodiscovery import safe

__all__ = ["compact_json", "lease_hex", "safe", "say", "table"]


def say(*lines: str) -> None:
    """Print ``lines`` on stdout at once (a pipe reader sees each as it happens)."""
    for line in lines:
        print(line)
    sys.stdout.flush()


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` as aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def lease_hex(lease: int) -> str | None:
    """A lease id as etcdctl prints it (``%016x``), ``None`` for no lease."""
    return f"{lease:016x}" if lease else None


def compact_json(value: Any) -> str:
    """``value`` as one line of JSON, keys sorted (for a table cell or a watch line)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
