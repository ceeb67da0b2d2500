"""Text from the registry or the network, made safe to put into a log line or a terminal."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

__all__ = ["Labelled", "safe"]


def safe(text: object) -> str:
    """``text`` with control characters, line breaks and lone surrogates escaped.

    Keys, addresses and error details can come from anyone who may write to etcd: a newline in one
    must not start a forged log line, nor an escape sequence repaint a terminal.
    """
    value = str(text)
    if value.isprintable():
        return value
    return value.encode("unicode_escape", "backslashreplace").decode("ascii")


class Labelled(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger speaking for one component: every line starts with its label.

    A pool's parts log through their pool's adapter (``"foo/bar/my-service: new endpoint ..."``),
    so the label is given once, where the component is made, not to every constructor below it.
    """

    def __init__(self, logger: logging.Logger, label: str) -> None:
        super().__init__(logger, {})
        self.label = label

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Put the label in front of the message."""
        return f"{self.label}: {msg}", kwargs
