"""Types of option values: durations as etcdctl writes them, TTLs, counts, rates, weights."""

from __future__ import annotations

import argparse
import math
import re

from aiodiscovery import MAX_TTL

__all__ = ["MAX_WEIGHT", "duration", "positive_float", "positive_int", "ttl", "weight"]

_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d*)?|\.\d+)(?P<unit>ms|s|m)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
# gRPC's endpoint weights are uint32.
MAX_WEIGHT = 2**32 - 1


def duration(text: str) -> float:
    """Parse ``etcdctl``-style durations: ``2s``, ``500ms``, ``1m``, or plain seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (try 2s, 500ms or 1.5)")
    seconds = float(match["value"]) * _UNITS[match["unit"]]
    if not seconds > 0 or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def _whole(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{what} must be {low} to {high}, got {value}")
    return value


def ttl(text: str) -> int:
    """A lease TTL: whole seconds that etcd accepts."""
    return _whole(text, 1, MAX_TTL, "the TTL in seconds")


def positive_int(text: str) -> int:
    """A count of at least 1."""
    return _whole(text, 1, 2**31 - 1, "the number")


def weight(text: str) -> int:
    """An endpoint weight, as gRPC's weighted balancers take it (uint32, at least 1)."""
    return _whole(text, 1, MAX_WEIGHT, "the weight")


def positive_float(text: str) -> float:
    """A positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
