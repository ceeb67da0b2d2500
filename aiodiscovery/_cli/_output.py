"""What the commands print on stdout: lines, tables, leases and JSON, all safe for a terminal.

Keys, addresses and metadata come from anyone who can write to etcd: every piece of registry text
goes through :func:`aiodiscovery.printable` (the library's rule for its log lines) before it is
printed, so that a newline cannot forge a line nor an escape sequence repaint the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from aiodiscovery import printable as safe

__all__ = ["compact_json", "json_text", "lease_hex", "safe", "say", "table"]


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


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON for scripts: non-ASCII text stays readable, but every character that is
    not printable (DEL, C1 controls such as CSI, line separators) is written as a ``\\u``
    escape, as JSON allows, so that the text cannot drive a terminal and reads back the same."""
    separators = None if indent is not None else (",", ":")
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    # A raw line break in the output is always the indentation's: json escapes those in strings.
    if text.replace("\n", "").isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    # Non-printable astral characters (unassigned planes): a UTF-16 surrogate pair, as JSON has it.
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
