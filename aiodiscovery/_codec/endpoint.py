"""The endpoint record, its Go-compatible codec, attributes, updates and target parsing.

The wire format is the one etcd's Go client writes in ``client/v3/naming/endpoints``: a compact JSON
object ``{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}``. Encoding reproduces Go 1.22+'s
``encoding/json`` byte for byte, and decoding reads every value exactly as Go's ``json.Unmarshal``
does (:mod:`.decoder` and :mod:`.encoder` model both).
"""

from __future__ import annotations

import enum
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

from .._exceptions import DecodeError
from .decoder import RecordError, brackets, decode_record
from .encoder import go_json, go_string
from .jsonvalue import held_size, json_equal, safe_repr

__all__ = [
    "BUDGET_RATIO",
    "DEFAULT_METADATA_BUDGET",
    "Endpoint",
    "LeaseLike",
    "Operation",
    "Update",
    "decode_endpoint",
    "encode_attributes",
    "encode_endpoint",
    "encode_metadata",
    "lease_id",
    "metadata_attributes",
    "metadata_weight",
    "parse_target",
]


class Operation(enum.IntEnum):
    """What an :class:`Update` does; the values are Go's ``endpoints.Operation`` constants."""

    ADD = 0
    DELETE = 1


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Endpoint:
    """One address of a service, with optional JSON metadata.

    ``addr`` is what gRPC dials (``"10.0.0.5:50051"``); ``metadata`` is any JSON value and is stored
    as Go's ``Metadata`` field (``None`` is written as ``null``).

    ``Endpoint("")`` raises :class:`ValueError`: an empty address names nothing dialable, so
    registering one is a mistake. Yet a value in etcd with an empty or missing ``Addr`` (``{}``,
    ``null``, ``{"Addr":""}``) decodes to an endpoint whose ``addr`` is ``""``, because that is
    what Go's ``Manager.List`` and resolver return; the pool skips such an endpoint.

    In a fleet with Go clients, keep metadata a string: grpc-go's ``round_robin`` panics on an
    object there. :meth:`with_attributes` builds the Go-safe form, :attr:`attributes` reads it.

    Two endpoints are equal when their addresses are and their metadata are the same JSON value
    (numbers by value, ``true`` is not ``1``, a tuple equals a list); the hash is the address's.
    Comparing and printing work at any nesting depth.
    """

    addr: str
    metadata: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.addr, str):
            raise TypeError(f"Endpoint.addr must be a string, got {self.addr!r}")
        if not self.addr:
            raise ValueError("Endpoint.addr must be a non-empty string: '' names nothing to dial")

    @classmethod
    def _decoded(cls, addr: str, metadata: Any) -> Endpoint:
        """An endpoint as read from etcd, whose address may be empty (as Go reads it)."""
        endpoint = object.__new__(cls)
        object.__setattr__(endpoint, "addr", addr)
        object.__setattr__(endpoint, "metadata", metadata)
        return endpoint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.addr == other.addr and json_equal(self.metadata, other.metadata)

    def __hash__(self) -> int:
        return hash(self.addr)

    def __repr__(self) -> str:
        return f"Endpoint(addr={self.addr!r}, metadata={safe_repr(self.metadata)})"

    @classmethod
    def with_attributes(
        cls, addr: str, attributes: Mapping[str, object] | None = None, /, **more: object
    ) -> Endpoint:
        """An endpoint whose metadata carries ``attributes`` in the Go-safe string form.

        ``Endpoint.with_attributes("10.0.0.5:50051", weight=2, zone="eu-west-1a")`` has the metadata
        ``"weight=2&zone=eu-west-1a"``; see :func:`encode_attributes`.
        """
        return cls(addr, encode_attributes({**(attributes or {}), **more}))

    @property
    def attributes(self) -> dict[str, str]:
        """The attributes in the metadata (see :func:`metadata_attributes`)."""
        return metadata_attributes(self.metadata)


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


def encode_metadata(metadata: Any) -> str:
    """``metadata`` as compact JSON, exactly as Go writes the ``Metadata`` field (keys sorted,
    HTML-safe escapes). Any depth Go accepts (10,000 levels) works: no recursion limit applies.

    Raises :class:`ValueError` or :class:`TypeError` as :func:`encode_endpoint` does.
    """
    return go_json(metadata, depth=1)


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """Encode ``endpoint`` exactly as Go's ``endpoints.Manager`` (built with Go 1.22+) writes it.

    Raises :class:`ValueError` or :class:`TypeError` for metadata Go could not read back: NaN or
    infinities, integers beyond float64's range, lone surrogates, cycles, nesting past Go's
    10,000 levels, or values JSON cannot hold.
    """
    return (
        f'{{"Op":{int(Operation.ADD)},"Addr":{go_string(endpoint.addr)},'
        f'"Metadata":{go_json(endpoint.metadata, depth=1)}}}'
    ).encode()


#: What one endpoint's address and metadata may always hold in memory, in bytes (see
#: :func:`decode_endpoint`'s ``budget``; change it with ``connect(metadata_budget=...)``).
DEFAULT_METADATA_BUDGET = 64 * 1024
#: Beyond the budget, an endpoint may hold this many times its stored value's size.
BUDGET_RATIO = 4
# The least an array or object holds (an empty list; an empty dict holds 64).
_MIN_CONTAINER = sys.getsizeof([])
# No JSON holds more than this many bytes per stored byte (the worst, {"":{"":...}}, holds 233
# for 5), so a value this much smaller than the budget needs no counting: the common case.
_WORST_RATIO = 64


def decode_endpoint(key: str, value: bytes, *, budget: int | None = None) -> Endpoint:
    """Decode an etcd value exactly as Go's ``json.Unmarshal`` reads it, or raise
    :class:`DecodeError` (and nothing else, whatever ``value`` holds).

    Field names match case-insensitively, a later duplicate wins, unknown fields and the stored
    ``Op`` are ignored (a listed key is always an add, but Op must still fit a uint8); ``null``,
    ``{}`` and a missing or empty ``Addr`` give an endpoint with ``addr == ""`` as in Go. Metadata
    numbers are Go's float64 values (an integral one comes back as an ``int``). ``key`` only
    serves the error.

    ``budget`` (bytes; ``None``: no bound, as in Go) bounds what the endpoint holds in memory:
    its address and metadata may take ``max(budget, BUDGET_RATIO * len(value))`` bytes, counted
    as ``sys.getsizeof`` of every object in them. Beyond that the value is refused with a
    :class:`DecodeError` saying so; one with too many arrays and objects is refused before it
    is decoded. Registry data is untrusted: ``[{},{},...]`` stores 3 bytes per object that
    Python holds in 64.
    """
    limit = None
    if budget is not None and len(value) * _WORST_RATIO > budget:
        limit = max(budget, BUDGET_RATIO * len(value))
    if limit is not None and (value.count(b"[") + value.count(b"{")) * _MIN_CONTAINER > limit:
        shape = brackets(value)
        containers = shape.count(b"[") + shape.count(b"{")
        if containers * _MIN_CONTAINER > limit:
            raise DecodeError(key, _over_budget(f"{containers:,} arrays and objects", limit))
    try:
        addr, metadata = decode_record(value)
    except RecordError as exc:
        raise DecodeError(key, str(exc)) from None
    if limit is not None and metadata is not None:
        held = sys.getsizeof(addr) + held_size(metadata, limit)
        if held > limit:
            raise DecodeError(key, _over_budget(f"over {held:,} bytes in memory", limit))
    return Endpoint._decoded(addr, metadata)


def _over_budget(what: str, limit: int) -> str:
    return (
        f"the metadata is too big to hold ({what}; the limit is {limit:,} bytes: "
        f"{BUDGET_RATIO} x the stored value's size, at least connect(metadata_budget=...))"
    )


# ---------------------------------------------------------------------------------------------
# Attributes: key=value pairs in metadata, in a form Go clients survive.

_WEIGHT = re.compile(r"[0-9]+(?:\.[0-9]*)?")
# gRPC's own endpoint weights are uint32.
MAX_WEIGHT = 2**32 - 1


def _attribute_text(value: object) -> str | None:
    """A scalar as attribute text (``2``, ``0.5``, ``true``), None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Beyond float64 no Go client could read it (nor int() print it fast).
        return int.__repr__(value) if value.bit_length() <= 1023 else None
    if isinstance(value, float) and math.isfinite(value):
        return go_json(value)
    return None


def encode_attributes(attributes: Mapping[str, object]) -> str:
    """Attributes as a URL query string (``"weight=2&zone=eu-west-1a"``), sorted by name.

    Values are strings, numbers or booleans (written as Go writes them: ``2``, ``0.5``, ``true``).
    A string in metadata is safe for every Go client, where a JSON object panics grpc-go's
    ``round_robin`` (etcd-io/etcd#19700); Go reads it back with ``url.ParseQuery``.
    """
    pairs = []
    for name, value in sorted(attributes.items()):
        text = _attribute_text(value)
        if not isinstance(name, str) or not name or text is None:
            raise ValueError(
                f"attribute {name!r}={value!r}: names are non-empty strings, values strings, "
                "finite numbers or booleans"
            )
        pairs.append((name, text))
    return urlencode(pairs)


def metadata_attributes(metadata: object) -> dict[str, str]:
    """The attributes in endpoint metadata, as name -> text.

    Reads the Go-safe form, a string in URL query form (``"weight=2&zone=eu-west-1a"``; the first
    of repeated names wins, as Go's ``url.Values.Get``; pieces that are not ``name=value`` are
    skipped), and the legacy object form (``{"weight": 2}``, whose scalar members are read as
    text: ``"2"``). Any other metadata has no attributes. Never raises.
    """
    found: dict[str, str] = {}
    if isinstance(metadata, str):
        for name, value in parse_qsl(metadata, keep_blank_values=True):
            # Go's ParseQuery refuses ';' in a pair; neither reads it.
            if name and ";" not in name and ";" not in value:
                found.setdefault(name, value)
    elif isinstance(metadata, Mapping):
        for name, value in metadata.items():
            text = _attribute_text(value)
            if isinstance(name, str) and text is not None:
                found[name] = text
    return found


def metadata_weight(metadata: object) -> int | None:
    """The ``weight`` attribute of endpoint metadata: ``None`` when there is none.

    A weight is a whole number from 1 to 2**32 - 1 (a fraction is dropped: ``"2.5"`` is 2), in
    either form (``"weight=3"`` or ``{"weight": 3}``). Anything else raises :class:`ValueError`
    saying what is wrong, so that a balancer can warn and fall back to 1.
    """
    text = metadata_attributes(metadata).get("weight")
    if text is None:
        return None
    whole = text.partition(".")[0]
    if _WEIGHT.fullmatch(text) is None or len(whole) > 10 or not 1 <= int(whole) <= MAX_WEIGHT:
        raise ValueError(f"weight {text[:40]!r} is not a whole number from 1 to {MAX_WEIGHT}")
    return int(whole)


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
