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

from aiodiscovery import encode_metadata
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


# Deeper than this, a value is written by the library's iterative encoder: Go accepts 10,000
# levels of metadata, Python's json stops at the recursion limit (about 1,000).
_SHALLOW = 64


def compact_json(value: Any) -> str:
    """``value`` as one line of JSON, keys sorted (for a table cell or a watch line)."""
    return _dumps(value, separators=(",", ":"), sort_keys=True)


def _dumps(value: Any, **options: Any) -> str:
    """json.dumps, with any part nested past :data:`_SHALLOW` levels written by
    :func:`aiodiscovery.encode_metadata` (one value's depth never fails a command)."""
    deep: list[Any] = []
    shallow = _cut(value, 0, deep)
    text = json.dumps(shallow, ensure_ascii=False, **options)
    for index, part in enumerate(deep):
        # The placeholder is a JSON string json.dumps wrote as is: replace it, quotes included.
        text = text.replace(json.dumps(_placeholder(index)), encode_metadata(part), 1)
    return text


def _placeholder(index: int) -> str:
    return f"\0aiodiscovery-deep-{index}\0"


def _cut(value: Any, level: int, deep: list[Any]) -> Any:
    if isinstance(value, dict | list | tuple):
        if level >= _SHALLOW:
            deep.append(value)
            return _placeholder(len(deep) - 1)
        if isinstance(value, dict):
            return {k: _cut(v, level + 1, deep) for k, v in value.items()}
        return [_cut(v, level + 1, deep) for v in value]
    return value


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON for scripts: non-ASCII text stays readable, but every character that is
    not printable (DEL, C1 controls such as CSI, line separators) is written as a ``\\u``
    escape, as JSON allows, so that the text cannot drive a terminal and reads back the same."""
    separators = None if indent is not None else (",", ":")
    text = _dumps(value, indent=indent, separators=separators)
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
