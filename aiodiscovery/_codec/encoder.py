"""Go 1.22+'s ``json.Marshal`` of an ``interface{}`` value, byte for byte and without recursion.

HTML-safe escapes, ``\\b``/``\\f`` short escapes, map keys sorted by their UTF-8 bytes, Go's
float format. What Go could not read back is refused instead of written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .decoder import MAX_DEPTH
from .jsonvalue import Shape, render

__all__ = ["go_json", "go_string"]


# Go escapes these even in compact output (HTML safety, JavaScript line separators); the C
# encoder below already writes quotes, backslashes and control characters as Go 1.22+ does
# (\b \f \n \r \t short, others as \u00XX).
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_quote: Any = json.encoder.encode_basestring


_GO_SPECIAL = re.compile("[<>&\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def go_string(text: str) -> str:
    """``text`` as a Go JSON string; a lone surrogate (no Go string holds one) is an error."""
    quoted = str(_quote(text))
    if _GO_SPECIAL.search(text) is None:
        return quoted
    if _SURROGATE.search(text):
        raise ValueError(f"{text[:40]!r} holds a lone surrogate, which is not valid Unicode")
    return quoted.translate(_GO_ESCAPES)


def _go_float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"metadata cannot hold {value!r}: JSON has no such number")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    if 1e-6 <= abs(value) < 1e21:
        # Go prints the shortest round-tripping digits in positional form in this range.
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, exponent = repr(value).split("e")
    return f"{mantissa.removesuffix('.0')}e{exponent[0]}{exponent[1:].lstrip('0') or '0'}"


def _go_int(value: int) -> str:
    if value.bit_length() > 1023:
        try:
            float(value)
        except OverflowError:
            raise ValueError(
                "metadata holds an integer beyond float64's range, which Go cannot read"
            ) from None
    return int.__repr__(value)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return _go_int(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return go_string(value)
    raise TypeError(f"metadata must be JSON-serialisable, got {type(value).__name__}")


def go_json(value: Any, *, depth: int = 0) -> str:
    """Encode ``value`` as Go's ``json.Marshal`` encodes the same ``interface{}`` value.

    ``depth`` is how deeply the value is nested in the document: a value Go's decoder would
    refuse (more than 10,000 levels in all) is refused here. Raises :class:`ValueError` for NaN,
    infinities, integers beyond float64, lone surrogates, cycles and too deep nesting, and
    :class:`TypeError` for what JSON cannot hold.
    """
    if value is None or isinstance(value, str | int | float):
        return _scalar(value)

    def expand(item: Any, on_path: bool, level: int) -> str | Shape:
        if isinstance(item, Mapping):
            if not all(isinstance(k, str) for k in item):
                raise TypeError(f"metadata object keys must be strings, got {list(item)[:5]!r}")
            # Go decodes objects into map[string]any and writes maps sorted by key bytes (code
            # point order is the same for valid Unicode).
            ordered = sorted(item.items(), key=lambda pair: pair[0])
            members = (
                (("," if i else "") + go_string(k) + ":", v) for i, (k, v) in enumerate(ordered)
            )
            opening, closing = "{", "}"
        elif isinstance(item, list | tuple):
            members = (("," if i else "", v) for i, v in enumerate(item))
            opening, closing = "[", "]"
        else:
            return _scalar(item)
        if on_path:
            raise ValueError("metadata contains a reference cycle")
        if depth + level >= MAX_DEPTH:
            raise ValueError(f"metadata is nested deeper than Go reads ({MAX_DEPTH} levels)")
        return opening, closing, members

    return render(value, expand)
