"""Text that came from outside (registry keys, addresses, values) made safe for one log line."""

from __future__ import annotations

__all__ = ["safe"]

# Enough to recognise any real key or address; more is an attack or an accident.
DEFAULT_LIMIT = 200


def safe(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` escaped so it can neither forge nor garble a log line.

    Every character that is not printable (control characters such as a newline, line and
    paragraph separators, bidirectional overrides, lone surrogates) becomes its Python escape
    (``\\n``, ``\\x00``, ``\\u2028``, ``\\ud800``) and a backslash becomes ``\\\\``, so the
    result is one line that stands for exactly one input; printable non-ASCII text is kept.
    Beyond ``limit`` characters it is cut, saying how long it was.
    """
    suffix = ""
    if len(text) > limit:
        suffix = f"...({len(text)} characters)"
        text = text[:limit]
    if text.isprintable() and "\\" not in text:
        return text + suffix
    return "".join(_escape(c) for c in text) + suffix


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    return char.encode("unicode_escape").decode("ascii")
