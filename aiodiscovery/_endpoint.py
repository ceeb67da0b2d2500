"""The endpoint record, its Go-compatible JSON codec, updates and target parsing.

The wire format is the one etcd's Go client writes in ``client/v3/naming/endpoints``: a compact JSON
object ``{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}``. Encoding reproduces Go's
``encoding/json`` byte for byte (field order, HTML-safe escapes, map keys sorted, float format), and
decoding accepts exactly what Go's decoder accepts for that struct.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urlsplit

from ._exceptions import DecodeError

__all__ = [
    "Endpoint",
    "LeaseLike",
    "Operation",
    "Update",
    "decode_endpoint",
    "encode_endpoint",
    "lease_id",
    "parse_target",
]

# Go's encoder escapes these even in compact mode (HTML safety and JavaScript line separators).
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
# Go stores Op as a uint8: any other JSON number makes the whole value undecodable.
_MAX_OP = 255


class Operation(enum.IntEnum):
    """What an :class:`Update` does; the values are Go's ``endpoints.Operation`` constants."""

    ADD = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address of a service, with optional JSON-serialisable metadata.

    ``addr`` is what gRPC dials (``"10.0.0.5:50051"``); ``metadata`` is any JSON value and is stored
    as Go's ``Metadata`` field (``None`` is written as ``null``).
    """

    addr: str
    metadata: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.addr, str) or not self.addr:
            raise ValueError(f"Endpoint.addr must be a non-empty string, got {self.addr!r}")


class LeaseLike(Protocol):
    """Anything with an etcd lease ``id``, such as :class:`aetcd.Lease`."""

    @property
    def id(self) -> int: ...


def lease_id(lease: int | LeaseLike | None) -> int:
    """Return the numeric lease id of ``lease`` (0, etcd's "no lease", for ``None``)."""
    if lease is None:
        return 0
    value = lease if isinstance(lease, int) else lease.id
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a lease must be a non-negative integer id or a lease object: {lease!r}")
    return value


@dataclass(frozen=True, slots=True)
class Update:
    """One change to a service's endpoints: add (put) or delete one key.

    Build them with :meth:`add` and :meth:`delete`. ``lease`` is only meaningful for an add: the key
    then lives as long as that lease.
    """

    op: Operation
    key: str
    endpoint: Endpoint | None = None
    lease: int = 0

    def __post_init__(self) -> None:
        if self.op is Operation.ADD and self.endpoint is None:
            raise ValueError("an ADD update needs an endpoint")
        if self.op is Operation.DELETE and (self.endpoint is not None or self.lease):
            raise ValueError("a DELETE update carries neither an endpoint nor a lease")

    @classmethod
    def add(cls, key: str, endpoint: Endpoint, *, lease: int | LeaseLike | None = None) -> Update:
        """An update that puts ``endpoint`` at ``key``, attached to ``lease`` if given."""
        return cls(Operation.ADD, key, endpoint, lease_id(lease))

    @classmethod
    def delete(cls, key: str) -> Update:
        """An update that deletes ``key`` (deleting a missing key is not an error)."""
        return cls(Operation.DELETE, key)


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


def _go_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False).translate(_GO_ESCAPES)


def _go_json(value: Any) -> str:
    """Encode ``value`` as Go's ``encoding/json`` encodes the same ``interface{}`` value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"metadata object keys must be strings: {value!r}")
        # Go decodes objects into map[string]any and writes maps with sorted keys.
        items = sorted(value.items())
        return "{" + ",".join(f"{_go_string(k)}:{_go_json(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    raise TypeError(f"metadata must be JSON-serialisable, got {type(value).__name__}")


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """Encode ``endpoint`` exactly as Go's ``endpoints.Manager`` writes it to etcd."""
    return (
        f'{{"Op":{int(Operation.ADD)},"Addr":{_go_string(endpoint.addr)},'
        f'"Metadata":{_go_json(endpoint.metadata)}}}'
    ).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # Go's float64 cannot hold 1e400 either, and we could not write it back.
        raise ValueError(f"number {text} is out of range")
    return value


def decode_endpoint(key: str, value: bytes) -> Endpoint:
    """Decode an etcd value the way Go's resolver does, or raise :class:`DecodeError`.

    Field names match case-insensitively, unknown fields and ``Op`` are ignored (a listed key is
    always an add), and a later duplicate field wins, as in Go. ``key`` only serves the error.
    """
    try:
        # Go reads invalid UTF-8 as U+FFFD instead of failing, and so do we.
        pairs = _DECODER.decode(value.decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise DecodeError(key, f"not JSON ({exc})") from None
    if not isinstance(pairs, _Object):
        raise DecodeError(key, f"expected a JSON object, got {type(_plain(pairs)).__name__}")
    addr: Any = None
    metadata: Any = None
    for name, field_value in pairs:
        folded = name.casefold()
        if folded == "addr":
            # Go fails the whole value on a mistyped field even if a later duplicate is fine.
            if field_value is not None and not isinstance(field_value, str):
                raise DecodeError(
                    key, f'"Addr" must be a string, got {type(_plain(field_value)).__name__}'
                )
            if field_value is not None:
                addr = field_value
        elif folded == "metadata":
            metadata = _plain(field_value)
        elif (
            folded == "op"
            and field_value is not None
            and not (type(field_value) is int and 0 <= field_value <= _MAX_OP)
        ):
            raise DecodeError(key, f"Op must be an integer 0..{_MAX_OP}, got {field_value!r}")
    if addr is None:
        raise DecodeError(key, 'no "Addr" field')
    if not addr:
        raise DecodeError(key, '"Addr" is empty')
    return Endpoint(addr, metadata)


class _Object(list[tuple[str, Any]]):
    """A JSON object as its ordered (name, value) pairs, so that field order can be honoured."""


def _plain(value: Any) -> Any:
    """Turn decoded :class:`_Object` pairs back into dicts (a later duplicate name wins)."""
    if isinstance(value, _Object):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# Built once: json.loads with hooks would build a fresh decoder for every value.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_Object, parse_constant=_reject_constant, parse_float=_finite_float
)

_TARGET_HELP = "a valid target looks like 'etcd:///foo/bar/my-service' or 'foo/bar/my-service'"


def parse_target(target: str) -> str:
    """Return the etcd key prefix (always ending in ``/``) that ``target`` names.

    ``etcd:///foo/bar/my-service`` and ``foo/bar/my-service`` both give ``foo/bar/my-service/``.
    Anything else raises :class:`ValueError` that says what is wrong.
    """
    if not isinstance(target, str):
        raise TypeError(f"target must be a string, got {type(target).__name__}")
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme != "etcd":
            raise ValueError(f"target {target!r} has scheme {parts.scheme!r}; {_TARGET_HELP}")
        if parts.netloc:
            raise ValueError(
                f"target {target!r} names the authority {parts.netloc!r}, which aiodiscovery "
                f"cannot honour: pass etcd endpoints to connect() instead; {_TARGET_HELP}"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"target {target!r} has a query or fragment; {_TARGET_HELP}")
        # Go's resolver takes the URL path without its first '/'.
        name = target[len("etcd://") :].removeprefix("/")
    elif target.startswith("etcd:"):
        raise ValueError(f"target {target!r} must start with 'etcd:///'; {_TARGET_HELP}")
    else:
        name = target
    if not name:
        raise ValueError(f"target {target!r} names no service; {_TARGET_HELP}")
    if name.endswith("/"):
        raise ValueError(
            f"target {target!r} ends with '/'; name the service without it, the prefix "
            f"separator is added for you; {_TARGET_HELP}"
        )
    if any(ch.isspace() or ch == "\0" for ch in name):
        raise ValueError(f"target {target!r} contains whitespace or NUL; {_TARGET_HELP}")
    return name + "/"
