"""Go's ``json.Unmarshal`` into etcd's endpoint record, modelled exactly and without recursion.

etcd's Go client stores an endpoint as ``json.Marshal`` of ``struct{Op uint8; Addr string;
Metadata interface{}}`` and reads it back with ``json.Unmarshal``. :func:`decode_record` accepts
exactly what Go accepts into that struct and yields the same Addr and Metadata: field names match
case-insensitively, a later duplicate wins, unknown fields hold any valid JSON, ``null`` leaves a
string or number field alone and resets Metadata, invalid UTF-8 reads as one U+FFFD per bad byte,
a lone surrogate escape as U+FFFD, Metadata numbers are float64 values and must fit one, nesting
stops at 10,000. Metadata equals Go's value for value; only the Python type may differ: an
integer float64 holds exactly (up to 2**53 in magnitude) comes back as an ``int``.

A fast path reads values with CPython's C json scanner wherever it provably reads as Go does;
the rest goes through an iterative parser of Go's grammar, so 10,000-deep metadata decodes and
no input raises anything but :class:`RecordError`. The C scanner nests as deep as the process's
recursion limit lets it, so a value that may nest deeper than Go's limit never reaches it.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
import threading
from itertools import accumulate
from typing import Any

__all__ = ["MAX_DEPTH", "RecordError", "brackets", "decode_record"]

# Go's scanner refuses a value nested deeper than this (the record's own object counts).
MAX_DEPTH = 10_000
# Go stores Op as a uint8.
_MAX_OP = 255


class RecordError(ValueError):
    """A value is not an endpoint record Go would read; the message says why."""


# ---------------------------------------------------------------------------------------------
# Fast paths: the exact shape Go and we write, then CPython's C json scanner wherever it
# provably reads as Go does. Whatever they cannot vouch for goes to the faithful parser below.

# The shape Go's Manager and encode_endpoint write (Op optional, as in etcd's seed document):
# three exact field names, once each, an Op ParseUint takes and an ASCII Addr without escapes.
_CANONICAL = re.compile(
    rb'\{(?:"Op":(?:0|[1-9][0-9]?|1[0-9]{2}|2[0-4][0-9]|25[0-5]),)?'
    rb'"Addr":"([\x20\x21\x23-\x5b\x5d-\x7e]*+)","Metadata":(.*)\}',
    re.DOTALL,
)
# Metadata that is an ASCII string with no escapes but Go's for '&', '<' and '>' (attributes).
_PLAIN_STRING = re.compile(rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\u00(?:26|3[cCeE]))*+"')
_HTML_UNESCAPES = [("\\u0026", "&"), ("\\u003c", "<"), ("\\u003C", "<")]
_HTML_UNESCAPES += [("\\u003e", ">"), ("\\u003E", ">")]
# Maybe a surrogate escape; then every escape, left to right, as Go's unquote reads them (so
# that an escaped backslash followed by "ud800" is not taken for one).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPES = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a pair
    r"|u([dD][89a-fA-F][0-9a-fA-F]{2})"  # a lone surrogate
    r"|.)",  # anything else
    re.DOTALL,
)
# Numbers the plain C conversions could read differently from Go's float64: an integer past
# 2**53 (16+ digits), an exponent that may overflow (3+ digits), an integer -0 (sign lost).
# Found by substring search on the digits all made '0' (a regular expression takes 30 times as
# long on a large value); a false alarm only costs the checked conversions.
_NUMBER_SHAPES = bytes.maketrans(b"123456789E", b"000000000e")
_RISKY_SHAPES = (b"0" * 16, b"e000", b"e+000", b"e-000")
_MINUS_ZERO = re.compile(rb"-0(?![.eE0-9])")
# Nesting measured without recursion: strings dropped (a bracket in one is not nesting), then the
# running sum of +1 per opening and -1 per closing bracket, at C speed.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
# The record's own fields in order, duplicates kept, from the last object the scanner closed
# (the outermost one); per thread, as one decode runs start to end in one thread.
_LAST_OBJECT = threading.local()


class _NotFast(Exception):
    """The fast path cannot vouch for this value: take the faithful path."""


def brackets(data: bytes) -> bytes:
    """The brackets of JSON ``data`` outside its strings, in order: exact for valid JSON, a
    guess for the rest. Its ``count(b"[") + count(b"{")`` is the number of arrays and objects."""
    return _STRING.sub(b"", data).translate(None, _NOT_BRACKET)


def _deeper_than(data: bytes, limit: int) -> bool:
    """Whether JSON ``data`` nests deeper than ``limit``: exact for valid JSON, a guess for the
    rest (which the faithful path then refuses with Go's own error)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    return max(accumulate(map(_NESTING.__getitem__, brackets(data))), default=0) > limit


def _decode_canonical(data: bytes) -> tuple[str, Any] | None:
    """Decode a record in the canonical shape, or return None for the general paths.

    The Metadata text must be one JSON value on its own, so the document holds exactly the three
    fields; it is read as the fast path reads values, giving up where that would.
    """
    match = _CANONICAL.fullmatch(data)
    if match is None:
        return None
    raw_addr, meta = match.groups()
    addr = raw_addr.decode("ascii")
    if meta == b"null":
        return addr, None
    if _PLAIN_STRING.fullmatch(meta):
        text = meta[1:-1].decode("ascii")
        if "\\" in text:
            for escape, char in _HTML_UNESCAPES:
                text = text.replace(escape, char)
        return addr, text
    if not _HAVE_C_SCANNER:
        return None
    try:
        text = meta.decode()
    except UnicodeDecodeError:
        return None
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        return None
    if _deeper_than(meta, MAX_DEPTH - 1):  # the record's own object is one level
        return None
    try:
        return addr, _json_for(meta).decode(text)
    except (ValueError, RecursionError, _NotFast):
        return None


def _json_for(data: bytes) -> json.JSONDecoder:
    """The decoder for ``data``: plain C number conversion unless a number may need ours."""
    shapes = data.translate(_NUMBER_SHAPES)
    if any(shape in shapes for shape in _RISKY_SHAPES) or (
        b"-0" in data and _MINUS_ZERO.search(data)
    ):
        return _CHECKED_JSON
    return _PLAIN_JSON


def _lone_surrogate(match: re.Match[str]) -> str:
    # Go's unquote: a surrogate escape that is not the first half of a pair reads as U+FFFD.
    return "\\ufffd" if match.group(1) is not None else match.group(0)


def _constant(name: str) -> Any:
    raise RecordError(f"not JSON: {name} is not a JSON value")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    _LAST_OBJECT.pairs = pairs
    return dict(pairs)  # Go's map: a later duplicate key wins


def _checked_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFast
    return value


def _checked_int(text: str) -> int | float:
    value = _integer(text)
    if isinstance(value, _OutOfRange):
        raise _NotFast
    return value


_PLAIN_JSON = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)
_CHECKED_JSON = json.JSONDecoder(
    object_pairs_hook=_object,
    parse_float=_checked_float,
    parse_int=_checked_int,
    parse_constant=_constant,
)
# The pure-Python scanner (no _json module) has quirks of its own: no fast path then.
_HAVE_C_SCANNER = json.scanner.c_make_scanner is not None  # type: ignore[attr-defined]


def _decode_fast(data: bytes) -> tuple[str, Any] | None:
    """Decode with the C json scanner; None sends ``data`` down the faithful path.

    It is fed what Go's decoder sees: invalid UTF-8 replaced by one U+FFFD per byte, lone
    surrogate escapes by U+FFFD escapes (the pairing rule is Go's), numbers converted as the
    faithful path converts them (or by C where that is provably the same). Its grammar is Go's
    but for NaN and Infinity, which are refused here as Go refuses them, so its syntax errors
    are Go's. It gives up on nesting beyond Go's limit (the scanner's own stops at the
    recursion limit, whatever that is), numbers beyond float64 (an error only in Metadata) and
    a refused Op (whose message names the literal).
    """
    if not _HAVE_C_SCANNER or _deeper_than(data, MAX_DEPTH):
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = _SURROGATE.sub("\ufffd", data.decode("utf-8", "surrogateescape"))
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        text = _ESCAPES.sub(_lone_surrogate, text)
    try:
        # The number literals are the same in data and text: only string contents differ.
        top = _json_for(data).decode(text)
    except RecordError:
        raise
    except json.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc.msg} at {exc.pos}") from None
    except (ValueError, RecursionError, _NotFast):
        return None
    if type(top) is not dict:
        return None
    addr = ""
    metadata: Any = None
    for name, value in _LAST_OBJECT.pairs:
        field = _FIELDS.get(name.lower()) if name.isascii() else None
        if field is None:
            continue
        if field == "Metadata":
            metadata = value
        elif value is None:
            continue
        elif field == "Addr":
            if type(value) is not str:
                raise RecordError(f'"Addr" must be a string, got {_kind(value)}')
            addr = value
        elif type(value) is not int or not 0 <= value <= _MAX_OP:
            return None
    return addr, metadata


# One token of Go's JSON grammar, after optional whitespace. Possessive quantifiers: an
# unterminated string must fail in linear time.
_TOKEN = re.compile(
    rb"[ \t\n\r]*+(?:"
    rb"([{}\[\],:])"
    rb'|"((?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+)"'
    rb"|(-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?[0-9]++)?+)"
    rb"|(true|false|null)"
    rb")"
)
_SPACE = re.compile(rb"[ \t\n\r]*+")
_ESCAPE = re.compile(
    r"\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|(.))",
    re.DOTALL,
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHORT_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_LITERALS: dict[bytes, Any] = {b"true": True, b"false": False, b"null": None}
_FIELDS = {"op": "Op", "addr": "Addr", "metadata": "Metadata"}


def _unescape(match: re.Match[str]) -> str:
    high, low, single, short = match.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + int(low, 16) - 0xDC00)
    if single is not None:
        # A lone surrogate is left for _go_string to replace, as Go replaces it with U+FFFD.
        return chr(int(single, 16))
    return _SHORT_ESCAPES[short]


def _go_string(body: bytes) -> str:
    """Go's ``unquote``: escapes resolved, each invalid UTF-8 byte and lone surrogate → U+FFFD."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        # surrogateescape maps every undecodable byte to its own surrogate, as Go's DecodeRune
        # returns (RuneError, 1) for each; the surrogates become U+FFFD below.
        text = body.decode("utf-8", "surrogateescape")
    if "\\" in text:
        text = _ESCAPE.sub(_unescape, text)
    return _SURROGATE.sub("\ufffd", text)


class _OutOfRange:
    """Stands for a number no float64 holds; an error only where Go converts it (Metadata)."""


_OUT_OF_RANGE = _OutOfRange()


# float64 holds every integer up to this magnitude exactly.
_EXACT = 2**53


def _integer(text: str | bytes) -> int | float | _OutOfRange:
    """An integer literal as Go's float64: an exact int while float64 holds it exactly."""
    if len(text) <= 17:
        value = int(text)
        if -_EXACT <= value <= _EXACT:
            # -0 is a float64 -0 in Go; int("-0") would lose the sign.
            return value if value or text[:1] not in ("-", b"-") else -0.0
    number = float(text)
    return _OUT_OF_RANGE if math.isinf(number) else number


def _go_number(text: bytes) -> Any:
    """A number literal as Go's ``ParseFloat`` reads it into ``interface{}``."""
    if b"." in text or b"e" in text or b"E" in text:
        value = float(text)
        return _OUT_OF_RANGE if math.isinf(value) else value
    return _integer(text)


def _describe(text: bytes) -> str:
    shown = text.decode("ascii", "replace")
    return shown if len(shown) <= 40 else f"{shown[:20]}...{shown[-10:]} ({len(shown)} chars)"


class _Frame:
    """An open object or array: its value so far and, for an object, the key being filled."""

    __slots__ = ("array", "key", "value")

    def __init__(self, value: Any, array: bool) -> None:
        self.value = value
        self.array = array
        self.key = ""


def _parse(data: bytes) -> tuple[Any, list[tuple[str, Any, bytes | None]], set[int]]:
    """Check ``data`` against Go's grammar and build it, without recursion.

    Returns the top value (:data:`_RECORD` for an object), the top object's fields as
    (name, value, number text) in order with duplicates kept, and the indexes of the fields that
    hold a number beyond float64's range. Nested objects are dicts (a later duplicate key wins).
    """
    stack: list[_Frame] = []
    fields: list[tuple[str, Any, bytes | None]] = []
    out_of_range: set[int] = set()
    top: Any = None
    pos = 0
    # What may come next: a value, an object key, and/or a ',' or closing bracket.
    want_value, want_key, may_close = True, False, False
    while True:
        match = _TOKEN.match(data, pos)
        if match is None:
            where = _SPACE.match(data, pos).end()  # type: ignore[union-attr]
            if where < len(data):
                raise RecordError(f"not JSON: unexpected {data[where : where + 1]!r} at {where}")
            if stack or want_value:
                raise RecordError("not JSON: unexpected end of input")
            return top, fields, out_of_range
        pos = match.end()
        structural, string, number, literal = match.groups()
        # Where the token begins (a string's opening quote is outside its group).
        start = match.start(match.lastindex or 0) - (string is not None)
        if not stack and not want_value:
            raise RecordError(f"not JSON: data after the top-level value at {start}")
        if structural is not None:
            frame = stack[-1] if stack else None
            if structural in b"{[":
                if not want_value:
                    raise RecordError(f"not JSON: unexpected {structural.decode()!r} at {start}")
                if len(stack) == MAX_DEPTH:
                    raise RecordError(f"nested deeper than {MAX_DEPTH} levels (Go's limit)")
                array = structural == b"["
                container: Any = [] if array else fields if frame is None else {}
                stack.append(_Frame(container, array))
                want_value, want_key, may_close = array, not array, True
                continue
            if frame is None:
                raise RecordError(f"not JSON: unexpected {structural.decode()!r} at {start}")
            if structural in b"}]":
                if not may_close or frame.array != (structural == b"]"):
                    raise RecordError(f"not JSON: unexpected {structural.decode()!r} at {start}")
                stack.pop()
                value = frame.value
            elif structural == b":":
                if frame.array or want_value or want_key or may_close:
                    raise RecordError(f"not JSON: unexpected ':' at {start}")
                want_value = True
                continue
            else:
                if want_value or want_key or not may_close:
                    raise RecordError(f"not JSON: unexpected ',' at {start}")
                want_value, want_key, may_close = frame.array, not frame.array, False
                continue
        elif want_key:
            if string is None:
                raise RecordError(f"not JSON: expected a string object key at {start}")
            stack[-1].key = _go_string(string)
            want_key = may_close = False
            continue
        elif not want_value:
            raise RecordError(f"not JSON: unexpected value at {start}")
        elif string is not None:
            value = _go_string(string)
        elif number is not None:
            value = _go_number(number)
            if value is _OUT_OF_RANGE:
                out_of_range.add(len(fields))
        else:
            value = _LITERALS[literal]
        # A value is complete: hand it to its container.
        if not stack:
            top = _RECORD if value is fields else value
            want_value = want_key = may_close = False
            continue
        parent = stack[-1]
        if parent.array:
            parent.value.append(value)
        elif parent.value is fields:
            fields.append((parent.key, value, number))
        else:
            parent.value[parent.key] = value
        want_value, want_key, may_close = False, False, True


_RECORD = object()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | _OutOfRange):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def _decode_slow(data: bytes) -> tuple[str, Any]:
    top, fields, out_of_range = _parse(data)
    if top is not _RECORD:
        if top is None:
            return "", None  # Go ignores a top-level null
        raise RecordError(f"expected a JSON object, got {_kind(top)}")
    addr = ""
    metadata: Any = None
    for index, (name, value, number) in enumerate(fields):
        # Go matches a name exactly, else case-insensitively; no non-ASCII rune folds onto the
        # letters of these three names (only K and S have such runes: U+212A, U+017F).
        field = _FIELDS.get(name.lower()) if name.isascii() else None
        if field is None:
            continue  # an unknown field: skipped, whatever it holds
        if field == "Metadata":
            if index in out_of_range:
                raise RecordError("a number in Metadata is beyond float64's range")
            metadata = value  # null included: Go sets the interface back to nil
        elif value is None:
            continue  # null leaves a string or a number as it was
        elif field == "Addr":
            if not isinstance(value, str):
                raise RecordError(f'"Addr" must be a string, got {_kind(value)}')
            addr = value
        elif number is None or not number.isdigit() or len(number) > 3 or int(number) > _MAX_OP:
            got = _describe(number) if number is not None else _kind(value)
            raise RecordError(f"Op must be an integer 0..{_MAX_OP}, got {got}")
    return addr, metadata


def decode_record(data: bytes) -> tuple[str, Any]:
    """Return (Addr, Metadata) as Go's ``json.Unmarshal`` reads ``data`` into the endpoint record.

    Raises :class:`RecordError` where Go fails, and nothing else, whatever the bytes.
    """
    try:
        decoded = _decode_canonical(data) or _decode_fast(data)
    finally:
        # Left behind, the scanner's last pairs would keep parts of this value (its unknown
        # fields, say) alive until the next decode.
        _LAST_OBJECT.__dict__.pop("pairs", None)
    return decoded if decoded is not None else _decode_slow(data)
