"""Text from the registry or the network, made safe to put into a log line."""

from __future__ import annotations

__all__ = ["safe"]


def safe(text: object) -> str:
    """``text`` with control characters, line breaks and lone surrogates escaped.

    Keys, addresses and error details can come from anyone who may write to etcd: a newline in one
    must not start a forged log line, nor an escape sequence repaint a terminal.
    """
    value = str(text)
    if value.isprintable():
        return value
    return value.encode("unicode_escape", "backslashreplace").decode("ascii")
